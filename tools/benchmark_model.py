"""Speed of our PixArt transformer against diffusers' ``PixArtTransformer2DModel`` with the same weights.

Both models get the same random weights (ours converted with ``diffusion.model.diffusers_format``), the same inputs
(XL width, 120 caption tokens of which few are valid, as with real T5 prompts) and are timed interleaved in one
process: median forward and forward+backward time, in fp32 and under bf16 autocast. Prints a markdown row per
precision and checks the outputs are still equal.

``--lcd`` times one whole LCM distillation training step instead (PixArt-delta §3.1): ours as the trainer builds and
runs it (the LCM config's model, ``LCMDistillation`` and AdamW) against the official ``train_pixart_lcm.py`` step
written on diffusers' transformer with the same weights (student forward and backward, the teacher's conditional and
unconditional passes as two calls, the EMA target's forward, AdamW, the EMA update; ``diffusion.bench.lcd``). It
prints both sides' step-1 loss and gradient norm (same weights, inputs, timesteps and noise) next to the timings.

    python tools/benchmark_model.py                      # CPU: XL width, 2 blocks, 256 px, batch 2
    python tools/benchmark_model.py --device cuda --depth 28 --resolution 1024 --ms --precisions bf16 --compile
    python tools/benchmark_model.py --lcd --warmup 1 --repeats 5          # CPU: the LCD step at the same size
    python tools/benchmark_model.py --lcd --size tiny --resolution 64     # smoke size
"""

from __future__ import annotations

import argparse
import statistics

import torch

from diffusion.bench import SIZES, diffusers_twin, get_size, timed
from diffusion.bench.lcd import bench_lcd
from diffusion.model import PixArt, PixArtMS
from diffusion.model.diffusers_format import diffusers_forward


def build_pair(args):
    torch.manual_seed(0)
    cls = PixArtMS if args.ms else PixArt
    ours = cls(input_size=args.resolution // 8, depth=args.depth, pe_interpolation=args.resolution / 512)
    with torch.no_grad():  # no layer at its zero init, so every path computes something
        for p in ours.parameters():
            p.normal_(std=0.02)
    return ours.to(args.device), diffusers_twin(ours).to(args.device).train().requires_grad_(True)


def make_inputs(args):
    g = torch.Generator().manual_seed(1)
    b, side = args.batch, args.resolution // 8
    x = torch.randn(b, 4, side, side, generator=g)
    y = torch.randn(b, 1, 120, 4096, generator=g)
    mask = torch.zeros(b, 120, dtype=torch.long)
    for i in range(b):
        mask[i, : args.valid_tokens - 3 * i] = 1  # realistic: short prompts of different lengths
    t = torch.randint(0, 1000, (b,), generator=g)
    hw = torch.tensor([[float(args.resolution)] * 2] * b)
    info = {"img_hw": hw, "aspect_ratio": torch.ones(b, 1)}
    return [v.to(args.device) for v in (x, t, y, mask)] + [{k: v.to(args.device) for k, v in info.items()}]


def call(model, inputs, ours: bool):
    return model(*inputs) if ours else diffusers_forward(model, *inputs)


def bench(args, precision: str) -> dict:
    ours, theirs = build_pair(args)
    inputs = make_inputs(args)
    dtype = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[precision]
    runners = {"ours": (ours, True), "diffusers": (theirs, False)}
    if args.compile:
        runners = {k: (torch.compile(m), o) for k, (m, o) in runners.items()}

    def autocast():
        return torch.autocast(args.device, dtype=dtype, enabled=dtype is not None)

    def forward(name):
        model, is_ours = runners[name]
        with torch.no_grad(), autocast():
            return call(model, inputs, is_ours)

    def train_step(name):
        model, is_ours = runners[name]
        model.zero_grad(set_to_none=True)
        with autocast():
            out = call(model, inputs, is_ours)
        out.float().square().mean().backward()

    outputs = []  # the first forward of each model also compiles it (with --compile): counted in ``first``
    first = timed(lambda: outputs.extend([forward("ours").float(), forward("diffusers").float()]), args.device)
    diff = (outputs[0] - outputs[1]).abs().max().item()
    times = {f"{n}_{k}": [] for n in runners for k in ("fwd", "train")}
    # ``first`` adds the first round: with --compile, compiling both models (forward and backward) is in it
    for rep in range(args.warmup + args.repeats):
        for name in runners:  # interleaved so drifts in machine load hit both models alike
            f = timed(lambda n=name: forward(n), args.device)
            s = timed(lambda n=name: train_step(n), args.device)
            first += (f + s) if rep == 0 else 0.0
            if rep >= args.warmup:
                times[f"{name}_fwd"].append(f)
                times[f"{name}_train"].append(s)
    med = {k: statistics.median(v) for k, v in times.items()}
    return dict(
        precision=precision,
        diff=diff,
        first=first,
        **med,
        fwd_ratio=med["diffusers_fwd"] / med["ours_fwd"],
        train_ratio=med["diffusers_train"] / med["ours_train"],
    )


def main_lcd(args) -> dict:
    """Prints the LCD table; returns {precision: LCDResult}."""
    size = get_size(args.size, depth=args.depth, resolution=args.resolution)
    ckpt = "on" if args.checkpointing else "off"
    m = {"depth": 28, "hidden_size": 1152, **size.model}
    print(
        f"# LCD step, {device_name(args)}; PixArt depth {m['depth']} width {m['hidden_size']}, {size.resolution} px, "
        f"batch {args.batch}, {args.valid_tokens}/120 valid tokens, gradient checkpointing {ckpt}; medians of "
        f"{args.repeats} interleaved rounds after {args.warmup}"
    )
    print(
        "| precision | ours step (s) | reference step (s) | ratio (reference / ours) | step-1 loss ours | "
        "step-1 loss reference | loss rel. diff | grad-norm rel. diff | warm-up rounds, both (s) |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    results = {}
    for precision in args.precisions:
        r = results[precision] = bench_lcd(
            size, precision, args.batch, args.valid_tokens, args.device, args.warmup, args.repeats, args.checkpointing
        )
        norm_diff = abs(r.grad_norm_ours - r.grad_norm_reference) / abs(r.grad_norm_reference)
        print(
            f"| {precision} | {r.ours:.3f} | {r.reference:.3f} | {r.ratio:.2f}x | {r.loss_ours:.6g} "
            f"| {r.loss_reference:.6g} | {r.loss_rel_diff:.1e} | {norm_diff:.1e} | {r.first:.1f} |",
            flush=True,
        )
    return results


def device_name(args) -> str:
    return torch.cuda.get_device_name() if args.device == "cuda" else f"CPU ({torch.get_num_threads()} threads)"


def main(argv=None) -> dict | None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--depth", type=int, default=2)
    parser.add_argument("--resolution", type=int, default=256, help="image size in pixels (latent = /8)")
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--valid-tokens", type=int, default=20, help="valid caption tokens of the longest prompt")
    parser.add_argument("--ms", action="store_true", help="PixArtMS (micro-conditions) instead of PixArt")
    parser.add_argument("--precisions", nargs="+", choices=["fp32", "bf16", "fp16"], default=["fp32", "bf16"])
    parser.add_argument("--compile", action="store_true", help="torch.compile both models")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--lcd", action="store_true", help="time one LCM distillation step against the official one")
    parser.add_argument("--size", choices=sorted(SIZES), default="cpu", help="--lcd: the architecture (width)")
    parser.add_argument(
        "--no-checkpointing", dest="checkpointing", action="store_false", help="--lcd: no gradient checkpointing"
    )
    args = parser.parse_args(argv)
    if args.lcd and (args.ms or args.compile):
        parser.error("--lcd takes neither --ms nor --compile")
    if args.lcd and "fp16" in args.precisions:
        parser.error("--lcd times fp32 and bf16 (fp16 training would need a GradScaler on both sides)")
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.lcd:
        return main_lcd(args)
    print(
        f"# {device_name(args)}; depth {args.depth}, {args.resolution}px, batch {args.batch}, "
        f"{args.valid_tokens}/120 valid tokens, compile={args.compile}"
    )
    print(
        "| precision | ours fwd (ms) | diffusers fwd (ms) | fwd ratio | ours fwd+bwd (ms) | diffusers fwd+bwd (ms) "
        "| train ratio | max abs diff | first round, both models (s) |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for precision in args.precisions:
        r = bench(args, precision)
        print(
            f"| {precision} | {r['ours_fwd'] * 1e3:.1f} | {r['diffusers_fwd'] * 1e3:.1f} | {r['fwd_ratio']:.2f}x "
            f"| {r['ours_train'] * 1e3:.1f} | {r['diffusers_train'] * 1e3:.1f} | {r['train_ratio']:.2f}x "
            f"| {r['diff']:.1e} | {r['first']:.1f} |",
            flush=True,
        )


if __name__ == "__main__":
    main()
