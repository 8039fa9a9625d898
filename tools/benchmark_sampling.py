"""End-to-end sampling speed, prompt -> image (PixArt-delta §3 / Table 1: the LCM student's 4 steps vs the teacher).

Same weights, same device, one process, runs interleaved, median of ``--runs`` after a warm-up:
  (a) our LCM 4 steps vs our teacher DPM-Solver++ 20 steps with CFG 4.5 (40 model evaluations per image vs 4);
  (b) our LCM 4 steps vs diffusers' ``PixArtAlphaPipeline`` + ``LCMScheduler`` 4 steps on the exported weights
      (``diffusion.export.export_pipeline``), same timesteps and seed (their latents are checked equal to ours).
Shapes: PixArt-XL/2 width (1152, 16 heads, 4096 caption channels, 120 tokens), ``--depth`` blocks with random
weights; T5 = a random 1-layer T5 encoder with d_model 4096 (4 heads of 16, d_ff 256) and the ByT5 tokenizer; VAE =
a random 4-level AutoencoderKL (channels 8/16/32/32, one layer per block, downsample 8). Both pipelines load the T5
and VAE from the same temporary folders.

    python tools/benchmark_sampling.py                                   # CPU: depth 2, 256 px, batch 2
    python tools/benchmark_sampling.py --device cuda --depth 28 --resolution 1024 --dtype fp16
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import torch

from diffusion.bench import SMALL_VAE, Size, measure, random_pixart, random_t5, random_vae
from diffusion.data import AutoencoderKLCodec, TextEncoder
from diffusion.export import export_pipeline, lcm_timesteps
from diffusion.pipeline import Pipeline, SamplerConfig

# ByT5 tokenizes bytes: 20 and 17 tokens (of 120), like typical prompts under T5's sentencepiece and like
# tools/benchmark_model.py's default of 20 valid tokens.
PROMPTS = ["a cat on a red sofa", "a red lighthouse"]
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def build_components(root: Path, args) -> tuple[torch.nn.Module, Path, Path]:
    """Random XL-width PixArt (PixArtMS at 1024 px, as the exported pipeline needs), T5 and VAE folders."""
    size = Size(
        "sampling",
        args.resolution,
        dict(depth=args.depth),
        dict(vocab_size=384, d_model=4096, d_kv=16, num_heads=4, d_ff=256, num_layers=1),
        dict(SMALL_VAE),
    )
    model = random_pixart(size)
    text_encoder = random_t5(size)
    text_encoder.model.save_pretrained(str(root / "t5"))
    text_encoder.tokenizer.save_pretrained(str(root / "t5"))
    random_vae(size).save_pretrained(str(root / "vae"))
    return model, root / "t5", root / "vae"


class LongestPromptTextEncoder(TextEncoder):
    """Runs T5 only up to the batch's longest prompt, then zero-pads to ``max_length`` (padding is masked out of T5's
    self-attention, so the valid tokens' features are unchanged); used to measure what that would save."""

    @torch.no_grad()
    def encode(self, prompts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        tokens = self.tokenizer(
            list(prompts), padding="longest", max_length=self.max_length, truncation=True, return_tensors="pt"
        ).to(self.device)
        y = self.model(input_ids=tokens.input_ids, attention_mask=tokens.attention_mask).last_hidden_state
        pad = self.max_length - y.shape[1]
        y = torch.nn.functional.pad(y, (0, 0, 0, pad))
        return y[:, None], torch.nn.functional.pad(tokens.attention_mask.long(), (0, pad))


def main(argv: list[str] | None = None) -> dict[str, float]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--depth", type=int, default=2)
    parser.add_argument("--resolution", type=int, default=256)
    parser.add_argument("--batch", type=int, default=2, choices=(1, 2))
    parser.add_argument("--dtype", default="fp32", choices=sorted(DTYPES))
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--prompts", nargs="+", default=PROMPTS, help="the first --batch prompts are used")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    args = parser.parse_args(argv)
    from diffusers import PixArtAlphaPipeline

    if args.threads:
        torch.set_num_threads(args.threads)
    dtype, device, prompts = DTYPES[args.dtype], args.device, args.prompts[: args.batch]
    with tempfile.TemporaryDirectory() as tmp:
        model, te_dir, vae_dir = build_components(Path(tmp), args)
        export = export_pipeline(model, Path(tmp) / "export", te_dir, vae_dir, scheduler="lcm")
        theirs = PixArtAlphaPipeline.from_pretrained(str(export), dtype=dtype).to(device)
        theirs.set_progress_bar_config(disable=True)
        codec = AutoencoderKLCodec(vae_dir, dtype=dtype).to(device)
        te = TextEncoder.from_pretrained(te_dir, max_length=120, dtype=dtype, device=device)
        te_short = LongestPromptTextEncoder.from_pretrained(te_dir, max_length=120, dtype=dtype, device=device)
        model = model.to(device, dtype).eval()
        ours = Pipeline(model, te, codec, args.resolution)
        ours_short = Pipeline(model, te_short, codec, args.resolution)
    timesteps = lcm_timesteps(4)

    def diffusers_lcm(output_type: str = "pt"):
        return theirs(
            prompts,
            guidance_scale=0.0,
            timesteps=timesteps,
            height=args.resolution,
            width=args.resolution,
            use_resolution_binning=False,
            clean_caption=False,
            output_type=output_type,
            generator=torch.Generator("cpu").manual_seed(0),
        ).images

    lcm = SamplerConfig(name="lcm", steps=4, timesteps=timesteps)
    with torch.no_grad():
        ref = ours.sample_latents(prompts, lcm, seed=0).float()
        diff = (diffusers_lcm("latent").float() - ref).abs().max().item() / max(ref.abs().max().item(), 1.0)
        (y_full, mask), (y_short, _) = te.encode(prompts), te_short.encode(prompts)
        t5_diff = ((y_full - y_short).abs() * mask[:, None, :, None]).max().item()
    cases = {
        "ours LCM 4 steps": (lambda: ours(prompts, seed=0, name="lcm", steps=4, timesteps=timesteps), 4),
        "ours DPM-Solver++ 20 steps, CFG 4.5": (lambda: ours(prompts, seed=0, name="dpm", steps=20), 40),
        "diffusers PixArtAlphaPipeline + LCMScheduler 4 steps": (lambda: diffusers_lcm().cpu(), 4),
        "ours LCM 4 steps, T5 run to the longest prompt": (
            lambda: ours_short(prompts, seed=0, name="lcm", steps=4, timesteps=timesteps),
            4,
        ),
    }
    y, mask = ours.encode(prompts)
    z = torch.randn(len(prompts), 4, args.resolution // 8, args.resolution // 8, device=device)
    t = torch.full((len(prompts),), 999, device=device)
    components = {
        "T5 encode, 120 tokens": lambda: te.encode(prompts),
        "T5 encode, longest prompt": lambda: te_short.encode(prompts),
        "transformer forward, batch B": lambda: model(z.to(dtype), t, y, mask),
        "transformer forward, batch 2B (CFG)": lambda: model(*(torch.cat([v, v]) for v in (z.to(dtype), t, y, mask))),
        "VAE decode": lambda: codec.decode(z),
    }
    fns = {name: fn[0] if isinstance(fn, tuple) else fn for name, fn in {**cases, **components}.items()}
    median = measure(fns, args.runs, device)
    report(args, cases, components, median, diff, t5_diff)
    return median


def report(args, cases: dict, components: dict, median: dict[str, float], diff: float, t5_diff: float) -> None:
    base = median["ours LCM 4 steps"]
    print(
        f"\ndevice={args.device} dtype={args.dtype} depth={args.depth} resolution={args.resolution} "
        f"batch={args.batch} threads={torch.get_num_threads()} runs={args.runs}; "
        f"diffusers vs ours LCM latents: max diff / max |latent| = {diff:.1e}; "
        f"T5 to the longest prompt vs 120 tokens: max diff on valid tokens = {t5_diff:.1e}\n"
    )
    print("| pipeline (prompt -> image) | model evals / image | median s / batch | time / ours LCM 4 |")
    print("|---|---|---|---|")
    for name, (_, nfe) in cases.items():
        print(f"| {name} | {nfe} | {median[name]:.3f} | {median[name] / base:.2f}x |")
    print("\n| component | median s |\n|---|---|")
    for name in components:
        print(f"| {name} | {median[name]:.4f} |")
    speedup = median["ours DPM-Solver++ 20 steps, CFG 4.5"] / base
    loop = 20 * median["transformer forward, batch 2B (CFG)"] / (4 * median["transformer forward, batch B"])
    vs_diffusers = median["diffusers PixArtAlphaPipeline + LCMScheduler 4 steps"] / base
    print(f"\n(a) LCM 4 steps vs teacher DPM 20 steps + CFG: {speedup:.2f}x faster end to end (target >= 9.5x); ")
    print(f"    transformer evaluations alone: {loop:.2f}x")
    print(f"(b) ours vs diffusers, both LCM 4 steps: {vs_diffusers:.2f}x faster (target >= 1.1x)")


if __name__ == "__main__":
    main()
