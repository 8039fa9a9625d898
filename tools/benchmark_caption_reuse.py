"""Transformer forward with the caption projected at every step vs encoded once (``PixArt.encode_caption``).

Same model and inputs, interleaved runs, medians; prints a markdown row per precision and the max difference.

    python tools/benchmark_caption_reuse.py                         # CPU: XL width, depth 2, 256², CFG batch 2
    python tools/benchmark_caption_reuse.py --device cuda --size full --precisions bf16
"""

from __future__ import annotations

import argparse

import torch

from diffusion.bench import get_size, machine, measure, random_pixart
from diffusion.build import DTYPES


def bench_one(dtype: torch.dtype, size, dev: str, batch: int, runs: int) -> dict[str, float]:
    """Median seconds of both paths and their max abs difference, for one precision."""
    side, channels = size.resolution // 8, size.model.get("caption_channels", 4096)
    model = random_pixart(size).to(dev, dtype).eval().requires_grad_(False)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(batch, 4, side, side, generator=g).to(dev, dtype)
    y = torch.randn(batch, 1, 120, channels, generator=g).to(dev, dtype)
    t, mask = torch.full((batch,), 500, device=dev), torch.zeros(batch, 120, dtype=torch.long, device=dev)
    mask[:, :20] = 1
    hw = torch.full((batch, 2), float(size.resolution), device=dev)
    info = {"img_hw": hw, "aspect_ratio": torch.ones(batch, 1, device=dev)}
    caption = model.encode_caption(y, mask)
    fns = {
        "plain": lambda: model(x, t, y, mask, info),
        "cached": lambda: model(x, t, None, None, info, caption=caption),
    }
    med = measure(fns, runs, dev, warmup=2)
    with torch.no_grad():
        diff = (fns["plain"]().float() - fns["cached"]().float()).abs().max().item()
    return dict(med, diff=diff)


def main(argv: list[str] | None = None) -> dict[str, dict[str, float]]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--size", default="cpu", choices=("full", "cpu", "tiny"))
    parser.add_argument("--precisions", nargs="+", default=["fp32", "bf16"], choices=sorted(DTYPES))
    parser.add_argument("--batch", type=int, default=2, help="2 = one prompt with its CFG null")
    parser.add_argument("--runs", type=int, default=15)
    args = parser.parse_args(argv)
    size = get_size(args.size)
    print(f"{machine()}; {size.describe()}; batch {args.batch}, 20/120 valid tokens; median of {args.runs}\n")
    print("| precision | caption every step (ms) | caption encoded once (ms) | ratio | max abs diff |")
    print("|---|---|---|---|---|")
    results = {}
    for name in args.precisions:
        r = results[name] = bench_one(DTYPES[name], size, args.device, args.batch, args.runs)
        print(
            f"| {name} | {r['plain'] * 1e3:.1f} | {r['cached'] * 1e3:.1f} | {r['plain'] / r['cached']:.2f}x "
            f"| {r['diff']:.1e} |",
            flush=True,
        )
    return results


if __name__ == "__main__":
    main()
