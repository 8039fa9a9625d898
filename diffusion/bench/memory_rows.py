"""The synthetic rows of ``tools/benchmark_memory.py``: PixArt-delta Table 1 / §3.3 (training) and §4 (8-bit
inference in 8 GB), built from random-weight architectures (:mod:`diffusion.bench`).

  lcm-*       one LCM distillation step (``LCMDistillation``, the LCM config's PixArtMS-XL/2 with gradient
              checkpointing) at 1024², batch 12: fp32 student + AdamW, frozen teacher and EMA target kept in fp32
              (as the official code and our trainer do), or in bf16 / fp16 (the lean setting); fp16 runs with a
              GradScaler as on the paper's V100s;
  teacher-*   one PixArt-alpha diffusion-loss step of the same network (what the teacher costs to fine-tune);
  controlnet  ControlNet-Transformer training (N = 13 trainable copies, frozen base in bf16) at the same size;
  infer-*     LCM 4-step inference of one 1024² image with T5-XXL in bf16 or int8 (``--text-encoder-8bit``), the
              transformer in bf16 and the SD VAE; ``lean``: T5 offloaded after encoding, VAE decoded in tiles.
  sigma*-*    PixArt-Sigma (:mod:`diffusion.bench.sigma_rows`): the Σ LCM step of ``configs/lcm/
              pixart_sigma_xl2_img1024_lcm.py`` (its CAME, bf16 teacher, fp32 target, batch 12) at 1024², with and
              without KV compression, and at 2K (batch 4, the 2K config's); Σ 4-step inference at the same sizes.
:func:`run_row` returns bytes of weights / gradients / optimizer state and the peak above what the process held before
building (:class:`~diffusion.bench.memory.Peak`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import torch
from torch import nn

from diffusion.bench import PROMPTS, Size, get_size, random_pixart, random_t5, random_vae
from diffusion.bench.memory import Peak, module_tensors, optimizer_tensors, tensor_bytes
from diffusion.pipeline import Pipeline

HALF = {"bf16": torch.bfloat16, "fp16": torch.float16}


class Row(NamedTuple):
    """A memory row: ``kind`` (lcm / teacher / controlnet / infer), the autocast dtype, the dtype of the frozen copies
    (inference: of T5; ``config``: as the config says) and the PixArt-Sigma model (a key of
    :data:`diffusion.bench.sigma_rows.MODELS`) or None for PixArt-alpha."""

    kind: str
    amp: str
    frozen: str | None
    sigma: str | None = None


ROWS = {
    "lcm-fp16-fp32copies": Row("lcm", "fp16", "fp32"),
    "lcm-fp16": Row("lcm", "fp16", "fp16"),
    "lcm-bf16": Row("lcm", "bf16", "bf16"),
    "teacher-fp16": Row("teacher", "fp16", None),
    "teacher-bf16": Row("teacher", "bf16", None),
    "controlnet-bf16": Row("controlnet", "bf16", "bf16"),
    "infer-bf16": Row("infer", "bf16", "bf16"),
    "infer-int8-lean": Row("infer", "bf16", "int8"),
    "sigma-lcm-bf16": Row("lcm", "bf16", "config", "1024"),
    "sigma-kv-lcm-bf16": Row("lcm", "bf16", "config", "1024-kv"),
    "sigma2k-lcm-bf16": Row("lcm", "bf16", "config", "2k"),
    "sigma-infer-bf16": Row("infer", "bf16", "bf16", "1024"),
    "sigma-kv-infer-bf16": Row("infer", "bf16", "bf16", "1024-kv"),
    "sigma2k-infer-bf16": Row("infer", "bf16", "bf16", "2k"),
}
PAPER_BY_KIND = {
    "lcm": "~32 GB / V100 (Table 1); < 24 GB (Fig. 8); target ≤ 20 GB",
    "teacher": "—",
    "controlnet": "16 × V100 32 GB (§4)",
    "infer": "within 8 GB with 8-bit T5 (§4); target < 7.5 GB",
}
SIGMA_PAPER = "— (the Σ paper gives no memory figure)"
PAPER = {row: SIGMA_PAPER if r.sigma else PAPER_BY_KIND[r.kind] for row, r in ROWS.items()}
# Per size: training batch and ControlNet depth N; (full = the paper's 12 images per GPU and N = 13).
BATCH = {"full": 12, "cpu": 2, "tiny": 2}


def fake_batch(size: Size, batch: int, device: str) -> dict:
    """Latents (B, 4, H/8, W/8), 120-token captions with 20 valid, micro-conditions: what the trainer feeds."""
    g = torch.Generator().manual_seed(0)
    side, channels = size.resolution // 8, size.model.get("caption_channels", 4096)
    mask = torch.zeros(batch, 120, dtype=torch.long)
    mask[:, :20] = 1
    hw = torch.full((batch, 2), float(size.resolution))
    batch = dict(
        x0=torch.randn(batch, 4, side, side, generator=g),
        y=torch.randn(batch, 1, 120, channels, generator=g),
        y_mask=mask,
        data_info={"img_hw": hw, "aspect_ratio": torch.ones(batch, 1)},
    )
    return {
        k: v.to(device) if torch.is_tensor(v) else {a: b.to(device) for a, b in v.items()} for k, v in batch.items()
    }


@dataclass
class TrainSetup:
    """What one training row holds: the trained model, the method (with its frozen copies), AdamW, the GradScaler,
    a batch on the device and the autocast dtype."""

    model: nn.Module
    method: nn.Module
    optimizer: torch.optim.Optimizer
    scaler: torch.amp.GradScaler
    batch: dict
    amp: torch.dtype
    frozen: list[nn.Module]

    @property
    def params(self) -> list[nn.Parameter]:
        return [p for p in self.model.parameters() if p.requires_grad]


def build_train(
    size: Size, device: str, kind: str, amp: str, frozen: str | None, batch_size: int, fused: bool
) -> TrainSetup:
    """The networks of a training row on ``device``: PixArt with gradient checkpointing; ``lcm``: teacher and EMA
    target copies (fp32, or ``frozen`` half precision); ``controlnet``: N = 13 trainable copies (at most depth - 1 in a
    reduced model) over a frozen base in ``frozen`` precision. ``fused``: AdamW's fused kernel (the trainer's choice
    on CUDA: one kernel for all parameters, no per-parameter temporaries)."""
    from diffusion.methods import DiffusionLoss, LCMDistillation

    model = random_pixart(size, grad_checkpointing=True).to(device).train()
    frozen_modules = []
    if kind == "controlnet":
        from diffusion.model.controlnet import wrap_controlnet

        model = wrap_controlnet(model, "transformer", min(13, len(model.blocks) - 1)).to(device).train()
        if frozen != "fp32":
            model.base_model.to(HALF[frozen])  # the frozen base in half precision, the copies in fp32
        frozen_modules = [model.base_model]
        method = DiffusionLoss(model)
    elif kind == "lcm":
        method = LCMDistillation(model, w=4.5).to(device)
        if frozen != "fp32":
            method.teacher.to(HALF[frozen])
            method.target.to(HALF[frozen])
        frozen_modules = [method.teacher, method.target]
    else:
        method = DiffusionLoss(model)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=2e-5, weight_decay=0.0, eps=1e-10, fused=fused or None)
    scaler = torch.amp.GradScaler(torch.device(device).type, enabled=amp == "fp16")
    batch = fake_batch(size, batch_size, device)
    if kind == "controlnet":
        batch["c"] = torch.randn_like(batch["x0"])  # the control latent (HED map through the VAE)
    return TrainSetup(model, method, optimizer, scaler, batch, HALF[amp], frozen_modules)


def train_step(s: TrainSetup) -> torch.Tensor:
    """One optimizer step as ``Trainer.train_step`` takes it (autocast forward, scaled backward, unscale, clip 0.01,
    step, zero_grad(set_to_none), EMA of the LCM target); returns the loss."""
    with torch.autocast(s.batch["x0"].device.type, dtype=s.amp):
        loss, _ = s.method(s.model, s.batch)
    s.scaler.scale(loss).backward()
    s.scaler.unscale_(s.optimizer)
    torch.nn.utils.clip_grad_norm_(s.params, 0.01)
    s.scaler.step(s.optimizer)
    s.scaler.update()
    s.optimizer.zero_grad(set_to_none=True)
    ema_step(s.method, s.model)
    return loss.detach()


def row_size(row: str, size_name: str) -> Size:
    """The :class:`Size` a row is built at: ``SIZES[size_name]``; a Σ row's at its model's resolution (2K: twice
    the size's)."""
    size = get_size(size_name)
    if ROWS[row].sigma is None:
        return size
    from diffusion.bench.sigma_rows import sigma_size

    return sigma_size(ROWS[row].sigma, size)


def row_batch(row: str, size_name: str) -> int:
    """Images per step: 1 for inference; ``BATCH[size_name]`` for training, except a Σ row at full size, which takes
    its config's per-GPU batch (1024²: the Σ LCM config's 12; 2K: the 2K config's 4)."""
    r = ROWS[row]
    if r.kind == "infer":
        return 1
    if r.sigma is not None and size_name == "full":
        from diffusion.bench.sigma_rows import full_batch

        return full_batch(r.sigma)
    return BATCH[size_name]


def build_row_train(row: str, size_name: str, device: str, fused: bool) -> TrainSetup:
    """The :class:`TrainSetup` of training row ``row`` at ``size_name``."""
    r = ROWS[row]
    size, batch = row_size(row, size_name), row_batch(row, size_name)
    if r.sigma is None:
        return build_train(size, device, r.kind, r.amp, r.frozen, batch, fused)
    from diffusion.bench.sigma_rows import build_sigma_train

    return build_sigma_train(size, r.sigma, device, batch, fused)


def build_row_infer(row: str, size_name: str, device: str) -> tuple[Pipeline, list[nn.Module]]:
    """The pipeline and networks of inference row ``row`` at ``size_name``."""
    r = ROWS[row]
    size = row_size(row, size_name)
    if r.sigma is None:
        return build_infer(size, device, r.frozen)
    from diffusion.bench.sigma_rows import build_sigma_infer

    return build_sigma_infer(size, r.sigma, device)


def train_row(row: str, size_name: str, device: str) -> dict:
    """Two optimizer steps; the peak covers both (the second holds the optimizer state the first created)."""
    base = Peak(device).now()
    s = build_row_train(row, size_name, device, fused=device.startswith("cuda"))
    weights = tensor_bytes(module_tensors(s.model, *s.frozen))  # a storage two modules share counts once
    grads = tensor_bytes(s.params)  # each gradient has its parameter's shape and dtype
    with Peak(device) as peak:
        for _ in range(2):
            loss = train_step(s)
    state = tensor_bytes(optimizer_tensors(s.optimizer))
    return dict(weights=weights, grads=grads, optimizer=state, peak=peak.peak - base, loss=loss.item())


def ema_step(method, model) -> None:
    """The method's after-step update: the LCM target's EMA (a half-precision target takes the student cast to its
    dtype; a bf16 target rounds away updates below 2^-8 of a weight: the memory row shows the cost, not a
    recommendation); nothing for a method without one."""
    method.after_optimizer_step(model)


def build_infer(size: Size, device: str, t5_dtype: str) -> tuple[Pipeline, list[nn.Module]]:
    """The pipeline of an inference row and its networks: T5 in bf16 or int8 (then lean: T5 waits on the CPU between
    calls and the VAE decodes in tiles), the transformer and the VAE in bf16."""
    from diffusion.data import AutoencoderKLCodec

    lean = t5_dtype == "int8"
    text_encoder = random_t5(size, "cpu" if lean else device, torch.bfloat16)
    if lean:
        text_encoder.quantize_8bit()
    model = random_pixart(size).to(device, torch.bfloat16).eval().requires_grad_(False)
    codec = AutoencoderKLCodec(random_vae(size, device, torch.bfloat16), dtype=torch.bfloat16)
    if lean:
        codec.set_lean_decode(True)
    pipe = Pipeline(model, text_encoder, codec, size.resolution, offload_text_encoder=lean)
    return pipe, [text_encoder.model, model, codec]


def infer_call(pipe: Pipeline) -> torch.Tensor:
    """One LCM 4-step image of the first prompt."""
    with torch.no_grad():
        return pipe(list(PROMPTS[:1]), seed=0, name="lcm", steps=4)


def infer_row(row: str, size_name: str, device: str) -> dict:
    """One LCM 4-step image; int8: T5 weights in int8, T5 offloaded, VAE tiled."""
    base = Peak(device).now()
    pipe, modules = build_row_infer(row, size_name, device)
    weights = tensor_bytes(module_tensors(*modules))
    if device.startswith("cuda"):
        torch.cuda.empty_cache()
    with Peak(device) as peak:
        infer_call(pipe)
    return dict(weights=weights, grads=0, optimizer=0, peak=peak.peak - base)


def run_row(row: str, size_name: str, device: str) -> dict:
    """One row of ``ROWS`` in this process (the tool runs each in a fresh one), with its batch and image size."""
    out = (infer_row if ROWS[row].kind == "infer" else train_row)(row, size_name, device)
    return dict(out, batch=row_batch(row, size_name), resolution=row_size(row, size_name).resolution)
