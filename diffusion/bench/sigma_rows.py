"""The PixArt-Sigma memory rows of ``tools/benchmark_memory.py`` (issue 18 item 6): the Σ LCM training step and Σ
4-step inference at 1024² (4096 tokens), with and without KV compression, and at 2K (16384 tokens).

Every Σ row builds from the Σ LCM config (``configs/lcm/pixart_sigma_xl2_img1024_lcm.py``): its transformer
(PixArtSigmaMS-XL/2, 300-token captions, no micro-conditions, caption dropout 0), its method (``LCMDistillation``,
w 4.5, bf16 teacher, fp32 EMA target), its optimizer (CAME) and its precision (bf16 autocast, no GradScaler), through
:func:`diffusion.build.build_model` / :func:`~diffusion.build.build_method` / ``build_optimizer`` as the trainer
does, with random N(0, 0.02) weights (no weight file is read: the null caption is the learned one, a tensor of the
same shape). A model of :data:`MODELS` changes only what its config changes:

- ``1024``: the LCM config as written, 128² latents, batch 12 (its ``train.batch_size``);
- ``1024-kv``: plus the ``kv_compress_config`` of ``configs/pixart/pixart_sigma_xl2_img1024_ms_kvcompress.py``
  (``conv``, 2 x 2, blocks 14-27: the last half of the blocks, which a reduced-depth model keeps);
- ``2k``: the model of ``configs/pixart/pixart_sigma_xl2_img2k_ms.py`` (256² latents, pe_interpolation 4, no
  compression as the official 2K config), batch 4 (that config's ``train.batch_size``; no 2K LCM recipe exists).

The batch is square latents with 20 of 300 caption tokens valid (:func:`diffusion.bench.config_step.config_batch`).
Inference: T5-XXL at 300 tokens in bf16, the transformer and a VAE of the SDXL VAE's shapes (the same architecture as
the SD VAE: 128/256/512/512 channels, 2 layers per block; scale 0.13025) in bf16, LCM 4 steps, one image. At reduced
sizes (``cpu``, ``tiny``) the size's width / depth / T5 / VAE apply and the 2K row doubles the size's resolution.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from functools import cache

import torch
from mmengine.config import Config
from torch import nn

from diffusion.bench import Size, random_pixart, random_t5, random_vae
from diffusion.bench.config_step import config_batch
from diffusion.bench.memory_rows import HALF, TrainSetup
from diffusion.paths import repo_path
from diffusion.pipeline import Pipeline

SIGMA_LCM_CONFIG = repo_path("configs/lcm/pixart_sigma_xl2_img1024_lcm.py")
KV_CONFIG = repo_path("configs/pixart/pixart_sigma_xl2_img1024_ms_kvcompress.py")
SIGMA_2K_CONFIG = repo_path("configs/pixart/pixart_sigma_xl2_img2k_ms.py")
SDXL_VAE_SCALE = 0.13025  # the Σ configs' scale_factor (SDXL VAE); it changes no tensor size


@dataclass(frozen=True)
class SigmaModel:
    """A Σ row's model: the resolution multiple of the size's (2K: 2), whether K/V are compressed, and the config
    whose ``train.batch_size`` is the row's batch at full size."""

    label: str
    scale: int
    kv: bool
    batch_config: str


MODELS = {
    "1024": SigmaModel("PixArt-Σ 1024-MS", 1, False, str(SIGMA_LCM_CONFIG)),
    "1024-kv": SigmaModel("PixArt-Σ 1024-MS, KV compression 2x2 on blocks 14-27", 1, True, str(SIGMA_LCM_CONFIG)),
    "2k": SigmaModel("PixArt-Σ 2K-MS", 2, False, str(SIGMA_2K_CONFIG)),
}


@cache
def _config(path: str) -> Config:
    return Config.fromfile(path)


def full_batch(model: str) -> int:
    """The per-GPU batch of ``MODELS[model]`` at full size: its config's ``train.batch_size``."""
    return int(_config(MODELS[model].batch_config).train.batch_size)


def sigma_size(model: str, size: Size) -> Size:
    """``size`` at the resolution of ``MODELS[model]`` (2K: twice the size's)."""
    return replace(size, resolution=size.resolution * MODELS[model].scale)


def model_overrides(model: str, size: Size) -> dict:
    """Overrides of the Σ LCM config's transformer for ``MODELS[model]`` at ``size`` (input size and
    pe_interpolation follow the resolution in :func:`~diffusion.bench.random_pixart`): the KV-compression config,
    on the last half of the blocks."""
    if not MODELS[model].kv:
        return {}
    kv = dict(_config(str(KV_CONFIG)).model.kv_compress_config)
    depth = size.model.get("depth", 28)
    return dict(kv_compress_config=dict(kv, kv_compress_layer=list(range(depth // 2, depth))))


def sigma_pixart(model: str, size: Size, **overrides) -> nn.Module:
    """The Σ transformer of ``MODELS[model]`` at ``size`` (already at the model's resolution), random weights."""
    return random_pixart(size, SIGMA_LCM_CONFIG, **model_overrides(model, size), **overrides)


def build_sigma_train(size: Size, model: str, device: str, batch_size: int, fused: bool) -> TrainSetup:
    """The Σ LCM step of ``MODELS[model]``: student with gradient checkpointing, the config's method (bf16 teacher,
    fp32 target), optimizer (fused when it has a fused kernel and ``fused``) and autocast dtype."""
    from diffusion.build import build_method
    from diffusion.engine.optim import FUSED_CAPABLE, build_optimizer

    cfg = _config(str(SIGMA_LCM_CONFIG))
    student = sigma_pixart(model, size, grad_checkpointing=True).to(device).train()
    unread = ("weights", "load_from", "null_caption")  # no weight file is read (random weights of the same shapes)
    built = {k: v for k, v in cfg.to_dict().items() if k not in unread}
    built["method"] = dict(built["method"], null_caption="learned")
    method = build_method(built, student).to(device)
    params = [p for p in student.parameters() if p.requires_grad]
    optimizer_cfg = dict(cfg.optimizer)
    if fused and optimizer_cfg["type"] in FUSED_CAPABLE:
        optimizer_cfg["fused"] = True
    optimizer = build_optimizer(params, optimizer_cfg, optimizer_cfg["lr"])
    amp = cfg.train.mixed_precision
    scaler = torch.amp.GradScaler(torch.device(device).type, enabled=amp == "fp16")
    batch = config_batch(student, batch_size, device)
    return TrainSetup(student, method, optimizer, scaler, batch, HALF[amp], list(method.frozen_networks()))


def build_sigma_infer(size: Size, model: str, device: str) -> tuple[Pipeline, list[nn.Module]]:
    """The Σ pipeline of ``MODELS[model]``: T5 at 300 tokens, the transformer and the SDXL-shaped VAE, all bf16."""
    from diffusion.data import AutoencoderKLCodec

    net = sigma_pixart(model, size).to(device, torch.bfloat16).eval().requires_grad_(False)
    text_encoder = random_t5(size, device, torch.bfloat16, max_length=net.model_max_length)
    vae = random_vae(size, device, torch.bfloat16)
    codec = AutoencoderKLCodec(vae, dtype=torch.bfloat16, scale_factor=SDXL_VAE_SCALE)
    pipe = Pipeline(net, text_encoder, codec, size.resolution)
    return pipe, [text_encoder.model, net, codec]
