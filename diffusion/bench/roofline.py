"""A roofline lower bound for PixArt-delta Table 2 (seconds per 1024² image, batch 1): ``--roofline``.

Each stage of one image is run on fake CUDA tensors in bf16 (:func:`diffusion.bench.simulate.simulation`: the fused
attention kernels a GPU runs, nothing allocated) with the project's real modules, and two things are counted:

- **FLOPs**: ``torch.utils.flop_counter.FlopCounterMode`` (matmuls, convolutions and the attention kernels; the
  elementwise ops, normalisations and softmax are not counted: they are memory traffic).
- **Bytes moved**, a lower bound for an eager implementation: every weight the stage uses read once (an embedding
  table only for the rows it gathers, which are its output), and every tensor an op creates written once and read
  once (2 x its bytes; a view or an in-place result creates nothing). Fusion across ops (``torch.compile``) can go
  below this; a kernel that re-reads its inputs (tiled matmuls, convolutions) goes above it.

Stages (:data:`STAGES`): ``text_encode`` (T5-XXL over 120 tokens, PixArt-alpha / delta; ``text_encode_300``: 300
tokens, PixArt-Sigma), ``caption_kv`` (the transformer's caption projection and the 28 blocks' cross-attention K/V,
once per image: the pipeline reuses them at every step), ``transformer_step`` (one PixArtMS-XL/2 forward at 4096
tokens; batch 2 for a row with classifier-free guidance, ``transformer_step_cfg``), ``vae_decode`` (the SD VAE
decoder, 128² latents to 1024² pixels). Captions hold 120 tokens (none trimmed).

The lower bound of a stage on a GPU is ``max(flops / peak, bytes / bandwidth)`` (dense bf16 / fp16 Tensor Core peak
and memory bandwidth from the datasheets, :mod:`diffusion.bench.gpus`); a row of Table 2 adds its stages:
``text_encode + caption_kv + steps x transformer_step + vae_decode``. Real runs add kernel launch latency, the
sampler's own ops, non-ideal kernel efficiency and host work, so measured times sit well above it.
"""

from __future__ import annotations

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.flop_counter import FlopCounterMode

from diffusion.bench import get_size, random_pixart, random_t5, random_vae
from diffusion.bench.fake import _tensors
from diffusion.bench.gpus import ROOFLINE_GPUS, get_gpu
from diffusion.bench.simulate import simulation

# Table 2 rows: name -> (label, steps, classifier-free guidance); the paper's seconds on A100 / V100 / T4.
ROWS = {
    "lcm4": ("PixArt-δ LCM 4 steps", 4, False),
    "dpm14": ("PixArt-α DPM-Solver 14 steps, CFG 4.5", 14, True),
    "dpm20": ("PixArt-α DPM-Solver 20 steps, CFG 4.5", 20, True),
}
PAPER = {"lcm4": {"A100": 0.5, "V100": 0.8, "T4": 3.3}, "dpm14": {"A100": 2.2, "V100": 5.5, "T4": 16.0}}
STAGES = ("text_encode", "text_encode_300", "caption_kv", "transformer_step", "transformer_step_cfg", "vae_decode")


class Traffic(TorchDispatchMode):
    """Bytes a stage moves under the model above: ``weights`` (each parameter of ``modules`` an op reads, once) and
    ``created`` (bytes of every storage an op creates)."""

    def __init__(self, modules):
        super().__init__()
        self.params = {id(t.untyped_storage()): t for m in modules for t in [*m.parameters(), *m.buffers()]}
        self.read: dict[int, int] = {}
        self.created = 0

    @property
    def weights(self) -> int:
        return sum(self.read.values())

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        inputs = {id(t.untyped_storage()): t for t in _tensors((args, kwargs))}
        if func is not torch.ops.aten.embedding.default:  # a lookup reads the rows it returns, not the table
            for key in inputs.keys() & self.params.keys():
                self.read[key] = self.params[key].untyped_storage().nbytes()
        out = func(*args, **kwargs)
        created = {id(t.untyped_storage()): t.untyped_storage().nbytes() for t in _tensors(out)}
        self.created += sum(n for key, n in created.items() if key not in inputs)
        return out


def count(fn, modules) -> dict[str, int]:
    """FLOPs and bytes of ``fn()`` (inside a simulation); ``bytes = weights + 2 x created``."""
    with FlopCounterMode(display=False) as flops, Traffic(modules) as traffic:
        fn()
    return dict(flops=flops.get_total_flops(), weights=traffic.weights, created=traffic.created,
                bytes=traffic.weights + 2 * traffic.created)  # fmt: skip


def stage_counts(size_name: str = "full") -> dict[str, dict[str, int]]:
    """FLOPs and bytes of every stage of :data:`STAGES` for one image at ``size_name`` (bf16, fake CUDA tensors)."""
    size = get_size(size_name)
    dtype, device = torch.bfloat16, "cuda"
    out = {}
    with simulation("cuda", device), torch.no_grad():
        t5 = random_t5(size, device, dtype).model
        model = random_pixart(size).to(device, dtype).eval()
        vae = random_vae(size, device, dtype)
        side = size.resolution // 8
        channels = model.caption_channels
        for name, tokens in (("text_encode", 120), ("text_encode_300", 300)):
            ids = torch.ones(1, tokens, dtype=torch.long, device=device)
            out[name] = count(lambda ids=ids: t5(input_ids=ids, attention_mask=torch.ones_like(ids)), [t5])
        y = torch.randn(1, 1, 120, channels, device=device, dtype=dtype)
        mask = torch.ones(1, 120, dtype=torch.long, device=device)
        out["caption_kv"] = count(lambda: model.encode_caption(y, mask), [model])
        for name, batch in (("transformer_step", 1), ("transformer_step_cfg", 2)):
            caption = model.encode_caption(y.expand(batch, -1, -1, -1), mask.expand(batch, -1))
            x = torch.randn(batch, model.in_channels, side, side, device=device, dtype=dtype)
            t = torch.full((batch,), 999, device=device)
            hw = torch.full((batch, 2), float(size.resolution), device=device)
            info = {"img_hw": hw, "aspect_ratio": torch.ones(batch, 1, device=device)}
            out[name] = count(lambda x=x, t=t, c=caption, i=info: model(x, t, None, None, i, caption=c), [model])
        z = torch.randn(1, 4, side, side, device=device, dtype=dtype)
        out["vae_decode"] = count(lambda: vae.decode(z), [vae])
    return out


def lower_bounds(stages: dict[str, dict[str, int]], gpus=ROOFLINE_GPUS) -> dict[str, dict]:
    """Per GPU: each stage's bound ``max(flops / peak, bytes / bandwidth)`` (s) and each Table 2 row's sum."""
    result = {}
    for name in gpus:
        gpu = get_gpu(name)
        bound = {s: max(c["flops"] / gpu.peak_flops, c["bytes"] / gpu.bandwidth) for s, c in stages.items()}
        rows = {}
        for row, (_, steps, cfg) in ROWS.items():
            step = bound["transformer_step_cfg" if cfg else "transformer_step"]
            rows[row] = bound["text_encode"] + bound["caption_kv"] + steps * step + bound["vae_decode"]
        result[name] = dict(stages=bound, rows=rows)
    return result


def roofline(size_name: str = "full", gpus=ROOFLINE_GPUS) -> dict:
    """The ``--roofline`` result: per-image FLOPs and bytes by stage, and the lower bounds per GPU."""
    stages = stage_counts(size_name)
    return dict(
        size=get_size(size_name).describe(),
        dtype="bf16",
        flops={s: c["flops"] for s, c in stages.items()},
        bytes={s: c["bytes"] for s, c in stages.items()},
        weight_bytes={s: c["weights"] for s, c in stages.items()},
        lower_bound_s=lower_bounds(stages, gpus),
        paper_s=PAPER,
    )


def roofline_markdown(result: dict, measured: dict | None = None) -> str:
    """Stage table (GFLOP, GB, bound per GPU in ms) and the Table 2 rows: bound per GPU next to the paper's seconds
    and, when ``measured`` (a ``benchmark_speed.py --json`` result) is given, our measured end-to-end seconds."""
    gpus = list(result["lower_bound_s"])
    lines = [
        f"Roofline lower bound (not measured): {result['size']}, {result['dtype']}, batch 1; FLOPs counted by "
        "FlopCounterMode on fake tensors, bytes = weights read once + every created tensor written and read once.",
        "",
        "| stage | GFLOP | GB moved | " + " | ".join(f"{g} (ms)" for g in gpus) + " |",
        "|" + "---|" * (3 + len(gpus)),
    ]
    for s in result["flops"]:
        bounds = " | ".join(f"{result['lower_bound_s'][g]['stages'][s] * 1e3:.2f}" for g in gpus)
        lines.append(f"| {s} | {result['flops'][s] / 1e9:,.0f} | {result['bytes'][s] / 1e9:.2f} | {bounds} |")
    lines += ["", "| row | " + " | ".join(f"{g} bound (s)" for g in gpus) + " | paper A100 / V100 / T4 (s) |"]
    lines[-1] += " ours, measured (s) |" if measured else ""
    lines.append("|" + "---|" * (len(gpus) + 2 + bool(measured)))
    for row, (label, _, _) in ROWS.items():
        bounds = " | ".join(f"{result['lower_bound_s'][g]['rows'][row]:.3f}" for g in gpus)
        paper = PAPER.get(row)
        paper_cell = " / ".join(f"{paper[k]:g}" for k in ("A100", "V100", "T4")) if paper else "—"
        line = f"| {label} | {bounds} | {paper_cell} |"
        if measured:
            t = measured.get("times", {}).get(row, {}).get("ours", {}).get("total")
            line += f" {t:.3f} ({measured['machine']}) |" if t is not None else " — |"
        lines.append(line)
    return "\n".join(lines)
