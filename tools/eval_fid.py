"""FID and prompt-attribute accuracy (PixArt-δ §3.3, §5: LCM at 4 steps vs the teacher at 4 and 14–20 steps).

    python tools/eval_fid.py ref output/embedded_data -o output/eval/ref.npz
    python tools/eval_fid.py sample --config configs/pixart/tiny_teacher.py --checkpoint CKPT \
        --prompts prompts.txt --out output/eval/dpm20 --sampler dpm --steps 20 --cfg-scale 4.5
    python tools/eval_fid.py calc output/eval/ref.npz output/eval/dpm20      # last line: the FID
    python tools/eval_fid.py attributes output/eval/dpm20

``--features embedded`` (default) uses a small attribute classifier trained on rendered embedded-data images
(``output/eval/attribute_net.safetensors``, trained in about a minute if missing): an *embedded FID*, comparable only
with itself. ``--features inception --weights FILE`` uses InceptionV3 from a local torchvision weights file.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from anywhere without installing the repo

from diffusion.build import load_pipeline  # noqa: E402
from diffusion.eval import (  # noqa: E402
    FEATURE_EXTRACTORS,
    attribute_accuracy,
    build_feature_extractor,
    compute_statistics,
    ensure_attribute_net,
    fid_between,
    folder_features,
    read_prompts,
    read_sample_folder,
    sample_to_folder,
    save_statistics,
)
from diffusion.eval.attribute_net import DEFAULT_PATH  # noqa: E402
from diffusion.pipeline import SAMPLERS  # noqa: E402

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


def _add_features(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--features", default="embedded", choices=sorted(FEATURE_EXTRACTORS))
    parser.add_argument("--weights", default=None, help=f"feature-net weights (embedded default: {DEFAULT_PATH})")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--device", default=DEVICE)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    ref = sub.add_parser("ref", help="feature statistics (.npz: mu, sigma) of an image folder or dataset root")
    ref.add_argument("data", help="image folder, or dataset root with data_info.json")
    ref.add_argument("-o", "--out", required=True, help="output .npz")
    ref.add_argument("--num", type=int, default=None, help="use the first N images only")
    _add_features(ref)
    sample = sub.add_parser("sample", help="PNG samples + prompts.txt from a prompt file and a checkpoint")
    sample.add_argument("--config", required=True)
    sample.add_argument("--checkpoint", required=True, help=".safetensors / .pth / diffusers or trainer folder")
    sample.add_argument("--prompts", required=True, help="text file, one prompt per line")
    sample.add_argument("--out", required=True)
    sample.add_argument("--sampler", default="dpm", choices=SAMPLERS)
    sample.add_argument("--steps", type=int, default=None, help="default: 4 for lcm, 20 otherwise")
    sample.add_argument(
        "--cfg-scale", type=float, default=None, help="default 4.5; lcm: w-embedding students only, w = cfg - 1"
    )
    sample.add_argument("--seed", type=int, default=0)
    sample.add_argument("--batch-size", type=int, default=16)
    sample.add_argument("--no-ema", action="store_true", help="trainer folder: use model.safetensors, not the EMA")
    sample.add_argument("--device", default=DEVICE)
    calc = sub.add_parser("calc", help="FID between two image folders / dataset roots / .npz statistics")
    calc.add_argument("a")
    calc.add_argument("b")
    _add_features(calc)
    attributes = sub.add_parser("attributes", help="prompt-attribute accuracy of a sample folder (its prompts.txt)")
    attributes.add_argument("folder")
    attributes.add_argument("--weights", default=DEFAULT_PATH, help="attribute-net weights (trained if missing)")
    attributes.add_argument("--device", default=DEVICE)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.command == "ref":
        extractor = build_feature_extractor(args.features, args.weights, args.device)
        features, report = folder_features(extractor, args.data, args.batch_size, args.num)
        mu, sigma = compute_statistics(features)
        save_statistics(args.out, mu, sigma, extractor.name, report.read)
        print(report.summary())
        print(f"wrote {args.out}: mu {mu.shape}, sigma {sigma.shape} ({extractor.name} features)")
    elif args.command == "sample":
        from mmengine.config import Config

        pipe = load_pipeline(Config.fromfile(args.config), args.checkpoint, args.device, use_ema=not args.no_ema)
        prompts = read_prompts(args.prompts)
        paths = sample_to_folder(
            pipe, prompts, args.out, args.sampler, args.steps, args.cfg_scale, args.seed, args.batch_size
        )
        print(f"wrote {len(paths)} images and prompts.txt to {args.out}")
    elif args.command == "calc":
        extractor = build_feature_extractor(args.features, args.weights, args.device)
        fid, reports = fid_between(args.a, args.b, extractor, args.batch_size)
        for source, report in zip((args.a, args.b), reports):
            print(f"{source}: {report.summary() if report else 'statistics file'}")
        print(f"FID ({extractor.name} features):")
        print(f"{fid:.6f}")
    else:
        net = ensure_attribute_net(args.weights, args.device)
        images, prompts = read_sample_folder(args.folder)
        print(json.dumps(attribute_accuracy(net, images, prompts), indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
