"""PixArt-delta Table 2: seconds per 1024² image, batch 1, ours next to diffusers' ``PixArtAlphaPipeline``.

Rows: PixArt-delta LCM 4 steps (no CFG); PixArt-alpha DPM-Solver++ 14 and 20 steps with CFG 4.5. Each row is split
into text encoding, the transformer steps and the VAE decode, plus the end-to-end call. Both pipelines run the *same
modules* (one T5, one VAE, our transformer and diffusers' ``PixArtTransformer2DModel`` holding the same weights),
interleaved round by round, medians of ``--runs`` after a warm-up; the LCM latents of the two are checked equal and
the DPM latents compared with diffusers given our learned null caption as its negative prompt.

Architectures are built from configs with random weights (``diffusion.bench``): ``--size full`` is PixArtMS-XL/2,
T5-v1.1-XXL and the SD VAE at 1024² (a GPU); ``--size cpu`` is the reduced size a CPU can time (it says so in the
output); ``--size tiny`` is for the smoke test.

``--compile`` adds our pipeline with regional compilation (``Pipeline(compile=True)``) and ``--cuda-graphs`` (CUDA
only) our pipeline with the whole step under CUDA graphs, each on a copy of the same transformer weights, in the same
interleaved rounds (diffusers stays eager). Their first call, which compiles, is timed on its own and reported apart
from the steady-state medians; their latents are compared with eager ours. Text encode and VAE decode are the same
modules as eager ours, so only their steps and end to end are timed.

    python tools/benchmark_speed.py                                    # CPU: reduced size, fp32
    python tools/benchmark_speed.py --dtype bf16 --compile
    python tools/benchmark_speed.py --device cuda --size full --dtype bf16 --compile --cuda-graphs
    python tools/benchmark_speed.py --config configs/lcm/pixart_sigma_xl2_img1024_lcm.py   # PixArt-Σ, 300 tokens

``--sigma-kv``: PixArt-Σ's KV token compression instead (``diffusion.bench.sigma_kv``): one transformer step with the
keys / values of the last half of the blocks (14-27 of 28) pooled 2x2 against the same weights uncompressed, at
256² / 512² / 1024² / 2K (``--sigma-resolutions``), interleaved medians, and where compression starts to pay.

    python tools/benchmark_speed.py --sigma-kv --runs 3                     # CPU: width 288, 4 blocks, fp32
    python tools/benchmark_speed.py --sigma-kv --device cuda --size full --dtype bf16

``--roofline`` measures nothing: it counts FLOPs and bytes moved per stage of one image on fake tensors (no GPU
needed) and prints the lower bound ``max(FLOPs / peak, bytes / bandwidth)`` on V100, A100, H100, H200 and T4 next to
the paper's seconds (``diffusion.bench.roofline``); ``--times F`` adds our measured seconds from an earlier
``--json F`` of this tool.

    python tools/benchmark_speed.py --roofline --json output/speed/roofline.json
"""

from __future__ import annotations

import argparse
import copy
import json
from pathlib import Path

import torch

from diffusion.bench import (
    LCM_CONFIG,
    PROMPTS,
    diffusers_twin,
    get_size,
    machine,
    measure,
    random_pixart,
    random_t5,
    random_vae,
    sigma_kv,
    timed,
)
from diffusion.build import DTYPES
from diffusion.data import AutoencoderKLCodec
from diffusion.export import default_pipeline, dpm_scheduler_config, lcm_scheduler_config, lcm_timesteps
from diffusion.pipeline import Pipeline, SamplerConfig

# name -> (sampler, steps, cfg); paper Table 2 (1024², batch 1) seconds on A100 / V100 / T4.
ROWS = {
    "lcm4": ("lcm", 4, None),
    "dpm14": ("dpm", 14, 4.5),
    "dpm20": ("dpm", 20, 4.5),
}
PAPER = {"lcm4": "0.5 / 0.8 / 3.3", "dpm14": "2.2 / 5.5 / 16.0", "dpm20": "—"}
LABELS = {
    "lcm4": "PixArt-δ LCM 4 steps",
    "dpm14": "PixArt-α DPM-Solver 14 steps, CFG 4.5",
    "dpm20": "PixArt-α DPM-Solver 20 steps, CFG 4.5",
}
STAGES = ("encode", "steps", "decode", "total")
# Our pipeline's variants beside eager ("ours"): switch -> (label, Pipeline keyword). Only steps and total are timed.
VARIANTS = {"compile": ("ours, compiled blocks", "compile"), "cuda_graphs": ("ours, CUDA graphs", "cuda_graphs")}


class Bench:
    """Both pipelines over shared components, and the stage functions timed for each row."""

    def __init__(self, args):
        import diffusers
        from diffusers import DPMSolverMultistepScheduler, LCMScheduler

        self.size = get_size(args.size, args.depth, args.resolution)
        self.device, self.dtype, self.res = args.device, DTYPES[args.dtype], self.size.resolution
        self.prompts = list(args.prompts[: args.batch])
        model = random_pixart(self.size, args.config).to(self.device, self.dtype).eval().requires_grad_(False)
        text_encoder = random_t5(self.size, self.device, self.dtype, model.model_max_length)
        pipeline_cls = getattr(diffusers, default_pipeline(model))  # PixArtSigmaPipeline for a Σ config
        vae = random_vae(self.size, self.device, self.dtype)
        codec = AutoencoderKLCodec(vae, dtype=self.dtype)
        self.ours = Pipeline(model, text_encoder, codec, self.res)
        self.variants = {  # each on its own copy of the weights: compiling works in place
            label: Pipeline(copy.deepcopy(model), text_encoder, codec, self.res, **{keyword: True})
            for switch, (label, keyword) in VARIANTS.items()
            if getattr(args, switch)
        }
        parts = dict(tokenizer=text_encoder.tokenizer, text_encoder=text_encoder.model, vae=vae)
        parts["transformer"] = diffusers_twin(model)
        self.theirs = {
            "lcm": pipeline_cls(**parts, scheduler=LCMScheduler.from_config(lcm_scheduler_config())),
            "dpm": pipeline_cls(**parts, scheduler=DPMSolverMultistepScheduler.from_config(dpm_scheduler_config())),
        }
        for pipe in self.theirs.values():
            pipe.set_progress_bar_config(disable=True)

    def _sampler(self, row: str) -> tuple[SamplerConfig, dict]:
        name, steps, cfg = ROWS[row]
        if name == "lcm":
            timesteps = lcm_timesteps(steps)
            return SamplerConfig("lcm", steps, timesteps=timesteps), dict(guidance_scale=0.0, timesteps=timesteps)
        return SamplerConfig(name, steps, cfg), dict(guidance_scale=cfg, num_inference_steps=steps)

    def _common(self) -> dict:
        return dict(height=self.res, width=self.res, use_resolution_binning=False, clean_caption=False)

    def theirs_call(self, row: str, output_type: str = "pt", **embeds):
        _, kwargs = self._sampler(row)
        pipe = self.theirs[ROWS[row][0]]
        prompt = None if embeds else self.prompts
        if "negative_prompt_embeds" in embeds:
            embeds = dict(embeds, negative_prompt=None)
        generator = torch.Generator("cpu").manual_seed(0)
        return pipe(prompt, **kwargs, **self._common(), **embeds, output_type=output_type, generator=generator).images

    def theirs_encode(self, row: str):
        guided = ROWS[row][2] is not None
        pe, pm, ne, nm = self.theirs[ROWS[row][0]].encode_prompt(
            self.prompts, do_classifier_free_guidance=guided, device=self.device, clean_caption=False
        )
        embeds = dict(prompt_embeds=pe, prompt_attention_mask=pm)
        if guided:
            embeds.update(negative_prompt_embeds=ne, negative_prompt_attention_mask=nm)
        return embeds

    def theirs_decode(self, z: torch.Tensor) -> torch.Tensor:
        pipe = self.theirs["lcm"]
        image = pipe.vae.decode(z.to(self.dtype) / pipe.vae.config.scaling_factor).sample
        return pipe.image_processor.postprocess(image, output_type="pt")

    @torch.no_grad()
    def first_calls(self, row: str) -> dict[str, dict[str, float]]:
        """Per variant: seconds of its first call (which compiles) and max |variant - ours| / max |ours| latents."""
        sampler, _ = self._sampler(row)
        caption = self.ours.encode(self.prompts)
        ref = self.ours.sample_latents(self.prompts, sampler, caption=caption).float()
        out = {}
        for label, pipe in self.variants.items():
            z = []
            first = timed(
                lambda p=pipe, z=z: z.append(p.sample_latents(self.prompts, sampler, caption=caption)), self.device
            )
            diff = ((z[0].float() - ref).abs().max() / ref.abs().max().clamp_min(1.0)).item()
            out[label] = dict(first_call=first, latent_diff=diff)
        return out

    def stage_fns(self, row: str) -> dict:
        """``{(impl, stage): fn}``; the steps and decode stages reuse captions / latents computed once here."""
        sampler, _ = self._sampler(row)
        caption = self.ours.encode(self.prompts)
        with torch.no_grad():
            z = self.ours.sample_latents(self.prompts, sampler, caption=caption)
        embeds = self.theirs_encode(row)
        variants = {}
        for label, pipe in self.variants.items():
            variants[(label, "steps")] = lambda p=pipe: p.sample_latents(self.prompts, sampler, caption=caption)
            variants[(label, "total")] = lambda p=pipe: p(self.prompts, seed=0, **_sampler_kwargs(sampler))
        return {
            ("ours", "encode"): lambda: self.ours.encode(self.prompts),
            ("ours", "steps"): lambda: self.ours.sample_latents(self.prompts, sampler, caption=caption),
            ("ours", "decode"): lambda: self.ours.decode(z),
            ("ours", "total"): lambda: self.ours(self.prompts, seed=0, **_sampler_kwargs(sampler)),
            **variants,
            ("diffusers", "encode"): lambda: self.theirs_encode(row),
            ("diffusers", "steps"): lambda: self.theirs_call(row, "latent", **embeds),
            ("diffusers", "decode"): lambda: self.theirs_decode(z),
            ("diffusers", "total"): lambda: self.theirs_call(row),
        }

    @torch.no_grad()
    def latent_diff(self, row: str) -> float:
        """max |ours - diffusers| / max |ours| of the final latents; diffusers gets our caption features and, with
        CFG, our learned null caption (diffusers' own negative prompt is T5(""), a different unconditional input)."""
        sampler, _ = self._sampler(row)
        y, mask = self.ours.encode(self.prompts)
        ref = self.ours.sample_latents(self.prompts, sampler, caption=(y, mask)).float()
        embeds = dict(prompt_embeds=y[:, 0], prompt_attention_mask=mask)
        if ROWS[row][2] is not None:
            null = self.ours.model.y_embedder.null_caption(len(self.prompts))[:, 0].to(y.dtype)
            embeds.update(negative_prompt_embeds=null, negative_prompt_attention_mask=mask)
        theirs = self.theirs_call(row, "latent", **embeds).float()
        return ((theirs - ref).abs().max() / ref.abs().max().clamp_min(1.0)).item()


def _sampler_kwargs(sampler: SamplerConfig) -> dict:
    return dict(name=sampler.name, steps=sampler.steps, cfg_scale=sampler.cfg_scale, timesteps=sampler.timesteps)


def run(args) -> dict:
    """Medians ``{row: {impl: {stage: s}}}``, the latent checks and the setup, as a JSON-able dict."""
    if args.threads:
        torch.set_num_threads(args.threads)
    bench = Bench(args)
    fns, diffs, first = {}, {}, {}
    for row in args.rows:
        diffs[row] = bench.latent_diff(row)
        first[row] = bench.first_calls(row)
        fns.update({(row, *key): fn for key, fn in bench.stage_fns(row).items()})
    median = measure(fns, args.runs, args.device)
    impls = ["ours", *bench.variants, "diffusers"]
    times = {
        row: {impl: {s: median[(row, impl, s)] for s in STAGES if (row, impl, s) in median} for impl in impls}
        for row in args.rows
    }
    return dict(
        machine=machine(),
        size=bench.size.describe(),
        dtype=args.dtype,
        batch=len(bench.prompts),
        runs=args.runs,
        times=times,
        latent_diff=diffs,
        variants=first,
    )


def markdown(result: dict) -> str:
    lines = [
        f"Machine: {result['machine']}; {result['size']}; {result['dtype']}; batch {result['batch']}; "
        f"median of {result['runs']} interleaved runs.",
        "",
        "| row | pipeline | text encode (s) | transformer steps (s) | VAE decode (s) | end to end (s) "
        "| diffusers / ours | paper A100 / V100 / T4 (s) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for row, impls in result["times"].items():
        for impl, t in impls.items():
            cells = " | ".join(f"{t[s]:.3f}" if s in t else "as ours" for s in STAGES)
            ratio = f"{impls['diffusers']['total'] / t['total']:.2f}x"
            extra = "| " if impl == "diffusers" else f"{ratio} | {PAPER[row] if impl == 'ours' else ''}"
            lines.append(f"| {LABELS[row]} | {impl} | {cells} | {extra} |")
    diffs = ", ".join(f"{LABELS[r]}: {d:.1e}" for r, d in result["latent_diff"].items())
    lines += ["", f"Final latents, max |ours - diffusers| / max |latent|: {diffs}."]
    for row, variants in result.get("variants", {}).items():
        for label, v in variants.items():
            steady = result["times"][row][label]["steps"]
            lines.append(
                f"{LABELS[row]}, {label}: first call (compiles) {v['first_call']:.2f} s vs steady-state steps "
                f"{steady:.3f} s; latents vs eager ours {v['latent_diff']:.1e}."
            )
    return "\n".join(lines)


def parse_args(argv: list[str] | None = None):
    cuda = torch.cuda.is_available()
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda" if cuda else "cpu")
    parser.add_argument("--size", default=None, choices=("full", "cpu", "tiny"), help="default: full on GPU, else cpu")
    parser.add_argument("--depth", type=int, default=None, help="override the size's transformer depth")
    parser.add_argument("--resolution", type=int, default=None, help="override the size's image side (px)")
    parser.add_argument("--dtype", default=None, choices=sorted(DTYPES), help="default: bf16 on GPU, else fp32")
    parser.add_argument("--batch", type=int, default=1, choices=(1, 2))
    parser.add_argument("--rows", nargs="+", default=list(ROWS), choices=list(ROWS))
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--prompts", nargs="+", default=list(PROMPTS))
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--json", default=None, help="also write the results here")
    parser.add_argument("--compile", action="store_true", help="add ours with regional torch.compile of the blocks")
    parser.add_argument("--cuda-graphs", action="store_true", help="add ours with the step under CUDA graphs (CUDA)")
    parser.add_argument("--config", default=str(LCM_CONFIG), help="the transformer's config (a Σ one: 300 tokens)")
    parser.add_argument("--sigma-kv", action="store_true", help="PixArt-Σ KV compression vs none (transformer step)")
    parser.add_argument("--sigma-resolutions", type=int, nargs="+", default=list(sigma_kv.RESOLUTIONS))
    parser.add_argument("--roofline", action="store_true", help="FLOPs / bytes lower bound per GPU (full size)")
    parser.add_argument("--times", default=None, help="with --roofline: an earlier --json of this tool")
    args = parser.parse_args(argv)
    if args.times and not args.roofline:
        parser.error("--times belongs to --roofline")
    if args.roofline:
        args.size = args.size or "full"
    on_gpu = args.device.startswith("cuda")
    if args.cuda_graphs and not on_gpu:
        parser.error(f"--cuda-graphs needs CUDA (--device cuda); the device is {args.device}")
    args.size = args.size or ("full" if on_gpu else "cpu")
    args.dtype = args.dtype or ("bf16" if on_gpu else "fp32")
    return args


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    if args.roofline:
        from diffusion.bench.roofline import roofline, roofline_markdown

        result = roofline(args.size)
        print(roofline_markdown(result, json.loads(Path(args.times).read_text()) if args.times else None))
        if args.json:
            Path(args.json).write_text(json.dumps(result, indent=1))
        return result
    if args.sigma_kv:
        if args.threads:
            torch.set_num_threads(args.threads)
        result = sigma_kv.run(
            args.size, args.sigma_resolutions, args.runs, args.device, DTYPES[args.dtype], args.batch
        )
        print(sigma_kv.markdown(result))
    else:
        result = run(args)
        print(markdown(result))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1))
    return result


if __name__ == "__main__":
    main()
