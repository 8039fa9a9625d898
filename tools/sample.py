"""Sample images from a trained PixArt-alpha teacher (DPM-Solver++ / DDIM with CFG) or a PixArt-delta LCM student
(1-4 consistency steps, §3), through ``diffusion.pipeline.Pipeline``; PixArt-Σ configs alike (300-token T5, SDXL VAE).

    python tools/sample.py --config configs/pixart/tiny_teacher.py --checkpoint assets/tiny_teacher/model.safetensors \
        --prompts "a large red circle at the top left on a gray background" --sampler dpm --steps 20 --cfg-scale 4.5 \
        --seeds 0 1 --out output/samples
    python tools/sample.py --config CFG --checkpoint output/run/checkpoints/step_0002000 --sampler lcm --steps 4 ...
    python tools/sample.py --config configs/controlnet/tiny_controlnet.py --checkpoint CONTROLNET \
        --control edges.png --annotator image --prompts "..." --out output/controlled      # ControlNet (§4)
    python tools/sample.py --config configs/pixart/pixart_sigma_xl2_img1024_ms.py \
        --checkpoint output/pretrained_models/PixArt-Sigma-XL-2-1024-MS.pth --height 1080 --width 1920 --binning \
        --prompts "..." --out output/sigma                                                  # PixArt-Σ, binned

Writes ``<out>/s{seed}_{index:03d}.png`` per image (index = prompt number: ``s0_000.png``, ``s0_001.png``, ...) and
``<out>/grid.png`` (one row per seed, one column per prompt). Without ``--sampler`` the config's method picks it, as
for the trainer's sample grids (``diffusion.methods.method_sampler``): LCM 4 steps for an LCM config, DPM-Solver++ 20
steps with CFG 4.5 for a teacher or ControlNet config; the choice is printed. With ``--control IMAGE`` (a ControlNet
config: one with a ``controlnet`` section), the image is read as displayed (EXIF orientation), resized to cover the
sampling size keeping its aspect ratio and centre-cropped (training's geometry,
``diffusion.data.annotators.read_control_image``), turned into a control map by ``--annotator`` (``canny``; ``hed``
with ``--hed ControlNetHED.pth``; ``image``: used as it is, e.g. an edge, depth or scribble map) and written as
``<out>/control.png``; every prompt is sampled under it. A ControlNet config sampled without ``--control``, or whose
ControlNet holds no trained weights (a plain teacher checkpoint), prints a warning: its samples are uncontrolled.
``--binning`` is diffusers' resolution binning (``use_resolution_binning``, on by default in ``PixArtAlphaPipeline``
and ``PixArtSigmaPipeline``): the requested ``--height``/``--width`` is sampled at the closest bucket of the model's
table (33 buckets at 256 / 512 / 1024 px, the 40 of ``ASPECT_RATIO_2048`` at 2K) and the images are resized to cover
the request and centre-cropped to it; without it the size is sampled as given (a multiple of codec downsample x patch).
``--checkpoint`` is a ``.safetensors``/``.pth`` file, a diffusers folder (with the
``y_embedding.safetensors`` side file), or a trainer checkpoint folder (its ``ema.safetensors`` unless ``--no-ema``);
an LCM-LoRA checkpoint is merged into its base at the config's ``method.lora`` scale (an adapters-only one takes its
base from ``weights.base``, an LCM config's teacher). A config whose method distils (LCM) samples the student from
``--checkpoint``; without one, a teacher's sampler (``--sampler dpm`` / ``ddim``) samples its teacher
(``weights.teacher``, built without the student's w-embedding), and the LCM sampler is refused (the config's weights
are where distillation starts, not the student). A w-embedding student samples at its config's ``method.w``
(``--cfg-scale`` = w + 1 overrides it: 5.5 for w = 4.5).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
from PIL import Image

from diffusion.build import DTYPES, load_pipeline, sampled_config, weight_sources
from diffusion.data.annotators import read_control_image
from diffusion.engine.validation import save_grid
from diffusion.eval.sampling import read_prompts
from diffusion.methods import chosen_sampler, configured_method
from diffusion.pipeline import SAMPLERS, Pipeline, SamplerConfig
from diffusion.protocols import ControlledModel

ANNOTATORS = ("image", "canny", "hed")  # image: the file is the control map already (edges, depth, scribbles)


def save_png(image: torch.Tensor, path: Path) -> None:
    """(3, H, W) uint8 -> PNG."""
    Image.fromarray(image.permute(1, 2, 0).numpy()).save(path)


def sample(
    pipe: Pipeline,
    prompts: list[str],
    seeds: list[int],
    out: str | Path,
    height: int | None = None,
    width: int | None = None,
    control: torch.Tensor | None = None,
    binning: bool = False,
    **sampler,
) -> list[Path]:
    """Sample every prompt with every seed (one batch per seed); returns the PNG paths written (grid last).

    ``control``: a ControlNet's control map (1, 3, H, W) uint8, shared by every prompt (saved as ``control.png``; at
    the bucket's size with ``binning``). ``binning``: ``Pipeline(binning=True)``, see the module docstring."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    written, batches = [], []
    if control is not None:
        save_png(control[0], out / "control.png")
        sampler["control"] = control
    for seed in seeds:
        images = pipe(prompts, seed=seed, height=height, width=width, binning=binning, **sampler)  # (B, 3, H, W) uint8
        batches.append(images)
        for index, image in enumerate(images):
            written.append(out / f"s{seed}_{index:03d}.png")
            save_png(image, written[-1])
    written.append(out / "grid.png")
    save_grid(torch.cat(batches), written[-1], columns=len(prompts))
    return written


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", required=True)
    parser.add_argument(
        "--checkpoint",
        default=None,
        help=".safetensors / .pth / diffusers or trainer folder (default: the config's weights; an LCM config: the "
        "student's checkpoint, or none with --sampler dpm/ddim for its teacher)",
    )
    src = parser.add_mutually_exclusive_group(required=True)
    src.add_argument("--prompts", nargs="+")
    src.add_argument("--prompt-file", help="one prompt per line (blank lines skipped)")
    parser.add_argument("--sampler", default=None, choices=SAMPLERS, help="default: the config's method's sampler")
    parser.add_argument("--steps", type=int, default=None, help="default: the method's, else 4 for lcm, 20 otherwise")
    parser.add_argument(
        "--cfg-scale",
        type=float,
        default=None,
        help="dpm/ddim: uncond + cfg (cond - uncond), default 4.5. lcm: only for a w-embedding student, diffusers' "
        "convention w = cfg - 1 (the paper's w 4.5 = cfg 5.5); a fixed-w student takes none",
    )
    parser.add_argument("--lcm-schedule", default=None, choices=("pixart", "diffusers"), help="default: pixart")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--out", required=True)
    parser.add_argument("--height", type=int, default=None)
    parser.add_argument("--width", type=int, default=None)
    parser.add_argument("--binning", action="store_true", help="sample at the closest bucket, resize + crop back")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", default="fp32", choices=sorted(DTYPES))
    parser.add_argument("--no-ema", action="store_true", help="trainer folder: use model.safetensors, not the EMA")
    parser.add_argument("--text-encoder-8bit", action="store_true", help="T5 weights in int8 (torchao)")
    parser.add_argument("--lean", action="store_true", help="T5 on the CPU between calls; VAE in slices/tiles")
    parser.add_argument("--compile", action="store_true", help="torch.compile each transformer block (regional)")
    parser.add_argument("--cuda-graphs", action="store_true", help="the whole denoiser step under CUDA graphs (CUDA)")
    parser.add_argument("--control", default=None, help="control image for a ControlNet config (PixArt-delta §4)")
    parser.add_argument("--annotator", default="image", choices=ANNOTATORS, help="control image -> control map")
    parser.add_argument("--hed", default=None, help="ControlNetHED.pth for --annotator hed")
    args = parser.parse_args(argv)
    if args.cuda_graphs and not args.device.startswith("cuda"):
        parser.error(f"--cuda-graphs needs CUDA (--device cuda); the device is {args.device}")
    if args.cuda_graphs and args.compile:
        parser.error("--cuda-graphs compiles the whole step already: pass --compile or --cuda-graphs, not both")
    return args


def choose_sampler(cfg, args: argparse.Namespace) -> dict:
    """The sampler keywords: what the command line gives, the rest from the config's method when ``--sampler`` is
    left out or names the method's own sampler (e.g. a w-embedding student's cfg_scale), then ``SAMPLER_DEFAULTS``."""
    given = dict(steps=args.steps, cfg_scale=args.cfg_scale, lcm_schedule=args.lcm_schedule)
    sampler = chosen_sampler(cfg, args.sampler, **given)
    chosen = SamplerConfig(**sampler)  # fills steps and cfg_scale from SAMPLER_DEFAULTS
    return {**sampler, "name": chosen.name, "steps": chosen.steps, "cfg_scale": chosen.cfg_scale}


def describe(sampler: dict, args: argparse.Namespace, method: str) -> str:
    """One line: the sampler used and where it came from."""
    cfg = "" if sampler["cfg_scale"] is None else f", CFG {sampler['cfg_scale']:g}"
    source = "--sampler" if args.sampler else f"the default of the config's method {method}"
    return f"sampler {sampler['name']}, {sampler['steps']} steps{cfg} ({source})"


def warn_uncontrolled(pipe: Pipeline, control: torch.Tensor | None) -> None:
    """A ControlNet sampled without control, or one whose ControlNet weights are untrained: say so on stderr."""
    if not isinstance(pipe.model, ControlledModel):
        return
    if control is None:
        reason = "no --control image was given"
    elif pipe.model.ignores_control:
        reason = "its zero projections are all zero (the checkpoint holds no trained ControlNet weights)"
    else:
        return
    print(f"warning: the config has a ControlNet but {reason}: these samples are uncontrolled", file=sys.stderr)


def main(argv: list[str] | None = None) -> list[Path]:
    from mmengine.config import Config

    args = parse_args(argv)
    prompts = args.prompts
    if args.prompt_file:
        prompts = read_prompts(args.prompt_file)
    cfg = Config.fromfile(args.config)
    method = configured_method(cfg)
    sampler = choose_sampler(cfg, args)
    try:  # an LCM config without --checkpoint: its teacher under a teacher's sampler
        sampled = sampled_config(cfg, args.checkpoint, sampler["name"])
    except ValueError as err:
        raise SystemExit(f"{args.config}: {err} (--checkpoint; --sampler dpm)") from None
    if sampled is not cfg:
        print(f"sampling the teacher {weight_sources(sampled).base} (weights.teacher)")
    print(describe(sampler, args, method.__name__))
    pipe = load_pipeline(
        sampled,
        args.checkpoint,
        args.device,
        DTYPES[args.dtype],
        use_ema=not args.no_ema,
        text_encoder_8bit=args.text_encoder_8bit,
        lean=args.lean,
        compile=args.compile,
        cuda_graphs=args.cuda_graphs,
    )
    control = None
    height, width = args.height or pipe.resolution[0], args.width or pipe.resolution[1]
    if args.binning:  # sampled at the bucket (the ControlNet sees its control there too), then cropped back
        print(
            f"resolution binning: {height}x{width} is sampled at {'x'.join(map(str, pipe.binned_size(height, width)))}"
        )
    if args.control:
        size = pipe.binned_size(height, width) if args.binning else (height, width)
        control = read_control_image(args.control, *size, args.annotator, args.hed)
    warn_uncontrolled(pipe, control)
    written = sample(pipe, prompts, args.seeds, args.out, args.height, args.width, control, args.binning, **sampler)
    print(f"wrote {len(written) - 1} images and {written[-1]}")
    return written


if __name__ == "__main__":
    main()
