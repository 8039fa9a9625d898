"""Cache T5 caption features and codec posteriors for a data folder (PixArt-α/δ train on these, facts §6).

Example (embedded default; --control: its items' control_path edge maps as they are):
    python tools/extract_features.py --data-root output/embedded_data --text-encoder output/tiny_text_encoder \\
        --codec pixel --resolution 32 --max-length 13 --control image
Your own images (after tools/make_data_info.py), a local diffusers AutoencoderKL:
    python tools/extract_features.py --data-root my_photos --codec vae --vae output/pretrained_models/sd-vae-ft-ema \\
        --text-encoder output/pretrained_models/t5_ckpts/t5-v1_1-xxl --resolution 512 --multi-scale --strict
Real scale (one process per GPU, each takes items rank::world_size; rank 0 writes the meta.json files):
    torchrun --nproc_per_node 8 tools/extract_features.py --data-root data/InternData --codec vae \\
        --vae output/pretrained_models/sd-vae-ft-ema --text-encoder output/pretrained_models/t5_ckpts/t5-v1_1-xxl \\
        --resolution 1024 --multi-scale
ControlNet control latents (PixArt-δ §4): --control hed runs the HED annotator on each item's own image at its
training size, as the official extraction does (--control canny: OpenCV Canny), and encodes the map with the same
codec; --control image encodes each item's control_path image as it is (a bare --control means image):
    torchrun --nproc_per_node 8 tools/extract_features.py --data-root data/InternData --codec vae \\
        --vae output/pretrained_models/sd-vae-ft-ema --text-encoder output/pretrained_models/t5_ckpts/t5-v1_1-xxl \\
        --resolution 1024 --control hed --hed output/pretrained_models/ControlNetHED.pth
Existing files are skipped, so rerunning resumes, except items whose caption or image changed since (re-extracted,
reported as changed; see diffusion/data/sources.py); a cache made with another T5, --max-length, VAE, scale factor,
resolution or control annotator (HED weights, Canny thresholds) is refused; --redo re-extracts the stale caches only
(--redo all: every cache). Skipped images are always listed; --strict makes them exit 1. SIGTERM / Ctrl-C stop
at the next batch boundary, saying where (exit 128 + the signal number); every file written is recorded, so
rerunning the same command resumes.
"""

import argparse
import os
import sys
from pathlib import Path

import torch

from diffusion.data.annotators import HED_HINT, build_annotator
from diffusion.data.codec import AutoencoderKLCodec, PixelCodec
from diffusion.data.features import ExtractionInterrupted, extract_features
from diffusion.data.text_encoder import TextEncoder
from diffusion.engine.signals import StopSignal

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
CONTROLS = ("hed", "canny", "image")
CANNY_DEFAULTS = {"canny_low": 100, "canny_high": 200}  # ControlNet's Canny thresholds


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-root", required=True, help="folder with data_info.json and the images")
    parser.add_argument("--json", default="data_info.json", help="item list inside --data-root")
    parser.add_argument("--text-encoder", required=True, help="local T5 encoder directory")
    parser.add_argument("--codec", choices=["pixel", "vae"], required=True)
    parser.add_argument("--vae", help="local AutoencoderKL directory (with --codec vae)")
    parser.add_argument(
        "--scale-factor",
        type=float,
        default=None,
        help="latent scale factor, recorded in the cache's meta.json (default: the VAE's config.scaling_factor; 1.0 "
        "for --codec pixel); the trainer's codec.scale_factor must agree",
    )
    parser.add_argument("--downsample", type=int, default=2, help="PixelCodec downsample")
    parser.add_argument("--resolution", type=int, required=True)
    parser.add_argument("--multi-scale", action="store_true", help="resize each image to its aspect-ratio bucket")
    parser.add_argument(
        "--control",
        nargs="?",
        const="image",
        choices=CONTROLS,
        help="also cache ControlNet control latents: hed / canny maps of each item's image, or each item's "
        "control_path image as it is (image, the default of a bare --control)",
    )
    parser.add_argument("--hed", metavar="PATH", help=f"ControlNetHED.pth for --control hed (default: {HED_HINT})")
    parser.add_argument(
        "--canny-low", type=int, metavar="LOW", help="--control canny low threshold, 0..255 grey (default 100)"
    )
    parser.add_argument("--canny-high", type=int, metavar="HIGH", help="--control canny high threshold (default 200)")
    parser.add_argument(
        "--canny-l2-gradient", action="store_true", help="--control canny: exact L2 gradient magnitude (OpenCV)"
    )
    parser.add_argument("--t5-batch-size", type=int, default=64, help="captions per T5 call")
    parser.add_argument("--vae-batch-size", type=int, default=4, help="images per VAE call")
    parser.add_argument("--workers", type=int, default=4, help="threads decoding images")
    parser.add_argument("--max-length", type=int, default=120, help="T5 tokens per caption")
    parser.add_argument(
        "--text-dtype", choices=sorted(DTYPES), default=None, help="T5 weights dtype (default: bf16 on GPU, else fp32)"
    )
    parser.add_argument(
        "--no-clean-caption",
        dest="clean_caption",
        action="store_false",
        help="tokenize captions as written (default: the official T5-embedder cleaning the PixArt weights saw)",
    )
    parser.add_argument(
        "--redo",
        nargs="?",
        const="stale",
        choices=("stale", "all"),
        help="re-extract this rank's share of the stale caches (a bare --redo), or of all of them (--redo all)",
    )
    parser.add_argument("--no-size-check", dest="check_sizes", action="store_false", help="trust declared sizes")
    parser.add_argument("--strict", action="store_true", help="exit 1 when any image was skipped")
    parser.add_argument("--rank", type=int, default=int(os.environ.get("RANK", 0)))
    parser.add_argument("--world-size", type=int, default=int(os.environ.get("WORLD_SIZE", 1)))
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args(argv)
    if args.codec == "vae" and not args.vae:
        parser.error("--codec vae needs --vae PATH")
    if args.text_dtype is None:
        args.text_dtype = "bf16" if str(args.device).startswith("cuda") else "fp32"
    _check_control_args(parser, args)
    return args


def _check_control_args(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Annotator options only with their --control mode (else they would silently do nothing); the HED file must
    exist (checked before T5 loads)."""
    given = {"--hed": args.hed is not None, "--canny-l2-gradient": args.canny_l2_gradient}
    given |= {f"--{key.replace('_', '-')}": getattr(args, key) is not None for key in CANNY_DEFAULTS}
    for flag, present in given.items():
        mode = flag[2:].split("-")[0]
        if present and args.control != mode:
            parser.error(f"{flag} applies to --control {mode} only")
    if args.control == "canny":
        for key, default in CANNY_DEFAULTS.items():
            setattr(args, key, default if getattr(args, key) is None else getattr(args, key))
        if not 0 <= args.canny_low <= args.canny_high:
            parser.error(
                f"--control canny needs 0 <= --canny-low <= --canny-high, got {args.canny_low}, {args.canny_high}"
            )
    if args.control == "hed":
        args.hed = args.hed or HED_HINT
        if not Path(args.hed).is_file():
            parser.error(
                f"--control hed: no HED weights file at {args.hed}; put the released ControlNetHED.pth there "
                "(lllyasviel/Annotators or PixArt-alpha/PixArt-alpha on the Hugging Face hub) or pass --hed PATH"
            )


def build_control_annotator(args: argparse.Namespace, device: str) -> torch.nn.Module | None:
    """The annotator of --control hed / canny on ``device``; None for --control image (control_path as it is)."""
    if args.control not in ("hed", "canny"):
        return None
    if args.control == "hed":
        return build_annotator("hed", args.hed).to(device)
    return build_annotator(
        "canny", canny_low=args.canny_low, canny_high=args.canny_high, l2_gradient=args.canny_l2_gradient
    )


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    with StopSignal() as stop:  # SIGTERM / Ctrl-C: finish the batch, say where, exit 128 + signal
        try:
            return extract(args, should_stop=lambda: stop.received is not None)
        except ExtractionInterrupted as interrupted:
            print(
                f"[rank {args.rank}/{args.world_size}] stopped by {stop.name} {interrupted.where}: "
                f"{interrupted.report.summary()}\nevery file written so far is recorded; rerun the same command to "
                "resume",
                file=sys.stderr,
            )
            return 128 + int(stop.received)


def extract(args: argparse.Namespace, should_stop=None) -> int:
    """Build the codec, T5 (and annotator) of ``args`` and extract; the exit code."""
    device = args.device
    if device == "cuda" and "LOCAL_RANK" in os.environ:
        device = f"cuda:{int(os.environ['LOCAL_RANK'])}"
    annotator = build_control_annotator(args, device)  # before T5 loads: a corrupt HED file fails at once
    if args.codec == "vae":
        codec = AutoencoderKLCodec(args.vae, scale_factor=args.scale_factor)
    else:
        codec = PixelCodec(args.downsample, **({"scale_factor": args.scale_factor} if args.scale_factor else {}))
    codec.to(device)
    text_encoder = TextEncoder.from_pretrained(
        args.text_encoder,
        max_length=args.max_length,
        dtype=DTYPES[args.text_dtype],
        device=device,
        clean_caption=args.clean_caption,
    )
    report = extract_features(
        args.data_root,
        text_encoder,
        codec,
        args.resolution,
        multi_scale=args.multi_scale,
        control=args.control is not None,
        annotator=annotator,
        text_batch_size=args.t5_batch_size,
        vae_batch_size=args.vae_batch_size,
        rank=args.rank,
        world_size=args.world_size,
        json_name=args.json,
        device=device,
        redo=args.redo or False,
        check_sizes=args.check_sizes,
        workers=args.workers,
        should_stop=should_stop,
    )
    print(f"[rank {args.rank}/{args.world_size}] {report.summary()}")
    if report.bad:
        print(
            f"[rank {args.rank}/{args.world_size}] {len(report.bad)} image(s) skipped: the dataset will leave them "
            "out" + (" (--strict: exit 1)" if args.strict else " (pass --strict to fail on this)"),
            file=sys.stderr,
        )
        return 1 if args.strict else 0
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
