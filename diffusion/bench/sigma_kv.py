"""PixArt-Sigma §2.3 KV token compression, timed: the transformer step with the keys and values of the last half of
the blocks pooled 2 x 2 (``conv``, the official kvcompress recipe: blocks 14-27 of 28) against the same weights
uncompressed, at Σ token counts (256² -> 256 tokens, 512² -> 1024, 1024² -> 4096, 2K -> 16384).

Both models are built from ``configs/pixart/pixart_sigma_xl2_img1024_ms_kvcompress.py`` (300-token captions, no
micro-conditions) with N(0, 0.02) weights; the uncompressed one is the compressed one's state dict without its
``attn.sr`` / ``attn.norm`` weights, loaded strictly into the config's model without ``kv_compress_config``. A
:data:`SIZES` entry sets width and depth (``full``: XL/2 on a GPU; ``cpu``: a reduced width a 2-core CPU can time,
the same half of the blocks compressed; ``tiny``: the smoke test). The two forwards are timed interleaved, round by
round (:func:`diffusion.bench.measure`), medians; the machine's load average is reported before and after, since on a
shared CPU it moves the absolute numbers (the ratio of interleaved runs is what to read).
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
from torch import nn

from diffusion.bench import machine, measure
from diffusion.build import build_model
from diffusion.paths import repo_path

KV_CONFIG = repo_path("configs/pixart/pixart_sigma_xl2_img1024_ms_kvcompress.py")
RESOLUTIONS = (256, 512, 1024, 2048)  # px; latents / 8, tokens (latent / 2)²
CAPTION_TOKENS = 20  # valid tokens of the 300 (the rest is padding, sliced away for the whole batch)
PAYS = 1.05  # a speed-up above this (beyond timing noise) counts as "compression pays"


@dataclass(frozen=True)
class KVSize:
    """Transformer width / depth / heads of a run; the compressed blocks are the last half (14-27 of 28 at full)."""

    name: str
    hidden_size: int
    depth: int
    num_heads: int

    @property
    def compressed(self) -> list[int]:
        return list(range(self.depth // 2, self.depth))

    def describe(self) -> str:
        first, last = self.compressed[0], self.compressed[-1]
        heads = f"{self.num_heads} heads of {self.hidden_size // self.num_heads}"
        return (
            f"{self.name}: PixArt-Σ width {self.hidden_size} ({heads}), depth {self.depth}, K/V of blocks "
            f"{first}-{last} compressed 2x2 (conv)"
        )


SIZES = {
    "full": KVSize("full", 1152, 28, 16),
    # CPU: head dim 72 as XL, a quarter of its width, 4 blocks of which the last 2 compress (as 14-27 of 28)
    "cpu": KVSize("cpu", 288, 4, 4),
    "tiny": KVSize("tiny", 48, 2, 2),
}


def kv_pair(size: KVSize) -> tuple[nn.Module, nn.Module]:
    """(compressed, uncompressed) models of ``size`` holding the same weights, in eval mode."""
    from mmengine.config import Config

    model_cfg = dict(Config.fromfile(str(KV_CONFIG)).model)
    model_cfg.update(
        hidden_size=size.hidden_size, depth=size.depth, num_heads=size.num_heads, grad_checkpointing=False
    )
    model_cfg["kv_compress_config"] = dict(model_cfg["kv_compress_config"], kv_compress_layer=size.compressed)
    torch.manual_seed(0)
    compressed = build_model({"model": model_cfg}, load_weights=False)
    with torch.no_grad():  # no layer left at its zero init; the compression keeps its mean-pool + LayerNorm init
        for name, p in compressed.named_parameters():
            if ".attn.sr." not in name and ".attn.norm." not in name:
                p.normal_(std=0.02)
    plain = build_model({"model": dict(model_cfg, kv_compress_config=None)}, load_weights=False)
    state = {k: v for k, v in compressed.state_dict().items() if ".attn.sr." not in k and ".attn.norm." not in k}
    plain.load_state_dict(state, strict=True)
    return compressed.eval().requires_grad_(False), plain.eval().requires_grad_(False)


def step_inputs(model: nn.Module, resolution: int, batch: int, device, dtype) -> tuple:
    """(x, t, y, mask) of one transformer step at ``resolution`` px (SDXL VAE: latent / 8) with 300-token captions."""
    g = torch.Generator().manual_seed(1)
    latent = resolution // 8
    x = torch.randn(batch, model.in_channels, latent, latent, generator=g)
    y = torch.randn(batch, 1, model.model_max_length, model.caption_channels, generator=g)
    mask = torch.zeros(batch, model.model_max_length, dtype=torch.long)
    mask[:, :CAPTION_TOKENS] = 1
    t = torch.full((batch,), 500)
    return x.to(device, dtype), t.to(device), y.to(device, dtype), mask.to(device)


def run(size_name: str, resolutions, runs: int, device: str, dtype: torch.dtype, batch: int = 1) -> dict:
    """Median seconds per transformer step, compressed and not, per resolution, plus the setup and the load."""
    size = SIZES[size_name]
    compressed, plain = (m.to(device, dtype) for m in kv_pair(size))
    fns = {}
    for res in resolutions:
        inputs = step_inputs(plain, res, batch, device, dtype)
        fns[(res, "uncompressed")] = lambda i=inputs: plain(*i)
        fns[(res, "compressed")] = lambda i=inputs: compressed(*i)
    load_before = os.getloadavg()
    median = measure(fns, runs, device)
    load_after = os.getloadavg()
    rows = {
        res: dict(
            tokens=(res // 16) ** 2,
            uncompressed=median[(res, "uncompressed")],
            compressed=median[(res, "compressed")],
        )
        for res in resolutions
    }
    for row in rows.values():
        row["speedup"] = row["uncompressed"] / row["compressed"]
    pays = [res for res in rows if all(row["speedup"] >= PAYS for r, row in rows.items() if r >= res)]
    return dict(
        machine=machine(),
        size=size.describe(),
        dtype=str(dtype).removeprefix("torch."),
        batch=batch,
        runs=runs,
        load=dict(before=load_before[0], after=load_after[0], cpus=os.cpu_count()),
        rows=rows,
        pays_from=min(pays) if pays else None,  # the smallest size from which every larger one pays
    )


def markdown(result: dict) -> str:
    load = result["load"]
    lines = [
        f"Machine: {result['machine']}; {result['size']}; {result['dtype']}; batch {result['batch']}; "
        f"median of {result['runs']} interleaved runs; load average {load['before']:.1f} before, "
        f"{load['after']:.1f} after ({load['cpus']} CPUs).",
        "",
        "| image | tokens | uncompressed (s / step) | KV-compressed (s / step) | speed-up |",
        "|---|---|---|---|---|",
    ]
    for res, row in result["rows"].items():
        times = f"{row['uncompressed']:.4f} | {row['compressed']:.4f}"
        lines.append(f"| {res}² | {row['tokens']} | {times} | {row['speedup']:.2f}x |")
    pays = result["pays_from"]
    where = f"from {pays}² ({(pays // 16) ** 2} tokens) on" if pays else "at none of these sizes"
    lines += ["", f"Compression pays (speed-up >= {PAYS}x here and at every larger size) {where}."]
    return "\n".join(lines)
