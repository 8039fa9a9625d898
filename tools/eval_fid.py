"""FID, CLIP score and prompt-attribute accuracy (PixArt-δ §3.3, §5: LCM at 4 steps vs the teacher at 4 and 14–20
steps; PixArt-α/δ report zero-shot FID-30K on MS-COCO).

    python tools/eval_fid.py ref output/embedded_data -o output/eval/ref.npz
    python tools/eval_fid.py sample --config configs/pixart/tiny_teacher.py --checkpoint CKPT \
        --prompts prompts.txt --out output/eval/dpm20 --sampler dpm --steps 20 --cfg-scale 4.5
    torchrun --nproc_per_node 8 tools/eval_fid.py sample ...      # sharded by global index, resumable
        # (a rerun resumes only with the settings in OUT/manifest.json; --overwrite starts over; SIGTERM stops
        # saying how many images are done, exit 143)
    python tools/eval_fid.py calc output/eval/ref.npz output/eval/dpm20      # last line: the FID
    python tools/eval_fid.py clip output/eval/dpm20 --clip PATH/clip-vit-large-patch14   # last line: CLIP score
    python tools/eval_fid.py attributes output/eval/dpm20

Feature networks (``--features``): ``embedded`` (default) is a small attribute classifier trained on rendered
embedded-data images (``output/eval/attribute_net.safetensors``, trained in about a minute if missing): an *embedded
FID*, comparable only with itself. ``inception --weights pt_inception-2015-12-05-6726825d.pth`` is the standard FID
(pytorch-fid's network and conventions). ``inception-torchvision`` uses torchvision's ImageNet weights: not the
standard FID. ``calc`` and ``clip`` log ``eval/fid`` / ``eval/clip_score`` to a wandb run with ``--log-wandb``.
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import threading
from pathlib import Path

import torch

from diffusion.build import load_pipeline, sampled_config, weight_sources
from diffusion.engine import dist
from diffusion.eval import (
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
from diffusion.eval.attribute_net import DEFAULT_PATH
from diffusion.eval.clip_score import CLIPScorer
from diffusion.eval.images import list_images
from diffusion.eval.manifest import check_sample_folder, config_sha256, file_identity
from diffusion.eval.sampling import image_name, shard_batches
from diffusion.methods import chosen_sampler
from diffusion.pipeline import SAMPLERS

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


def _add_features(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--features", default="embedded", choices=sorted(FEATURE_EXTRACTORS))
    parser.add_argument(
        "--weights", default=None, help=f"feature-net weights (embedded default: {DEFAULT_PATH}; inception: required)"
    )
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--device", default=DEVICE)


def _add_wandb(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--log-wandb", action="store_true", help="log the metric to a wandb run")
    parser.add_argument("--wandb-project", default="pixart-delta")
    parser.add_argument("--wandb-run", default=None, help="id of the (training) run to attach the metric to")


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
    sample.add_argument("--checkpoint", default=None, help=".safetensors / .pth / diffusers or trainer folder")
    sample.add_argument("--prompts", required=True, help="text file, one prompt per line (e.g. 30K COCO captions)")
    sample.add_argument("--out", required=True)
    sample.add_argument(
        "--sampler", default=None, choices=SAMPLERS, help="default: the config's method's (lcm for an LCM config)"
    )
    sample.add_argument("--steps", type=int, default=None, help="default: the method's, else SAMPLER_DEFAULTS")
    sample.add_argument(
        "--cfg-scale",
        type=float,
        default=None,
        help="default 4.5; lcm: w-embedding students only, w = cfg - 1 (default: the config's method.w + 1)",
    )
    sample.add_argument("--control", default=None, help="ControlNet: folder of control images, i-th for prompt i")
    sample.add_argument("--num", type=int, default=None, help="the first N prompts only")
    sample.add_argument("--seed", type=int, default=0)
    sample.add_argument("--batch-size", type=int, default=16, help="per rank; the images depend on it")
    sample.add_argument("--no-ema", action="store_true", help="trainer folder: use model.safetensors, not the EMA")
    sample.add_argument(
        "--overwrite", action="store_true", help="delete OUT's PNGs first (a folder made with other settings)"
    )
    sample.add_argument("--device", default=None, help="default: cuda:LOCAL_RANK when available, else cpu")
    calc = sub.add_parser("calc", help="FID between two image folders / dataset roots / .npz statistics")
    calc.add_argument("a")
    calc.add_argument("b")
    _add_features(calc)
    _add_wandb(calc)
    clip = sub.add_parser("clip", help="CLIP score of a sample folder (its images against its prompts.txt)")
    clip.add_argument("folder")
    clip.add_argument("--clip", required=True, help="local CLIP folder, e.g. openai/clip-vit-large-patch14")
    clip.add_argument("--batch-size", type=int, default=64)
    clip.add_argument("--device", default=DEVICE)
    _add_wandb(clip)
    attributes = sub.add_parser("attributes", help="prompt-attribute accuracy of a sample folder (its prompts.txt)")
    attributes.add_argument("folder")
    attributes.add_argument("--weights", default=DEFAULT_PATH, help="attribute-net weights (trained if missing)")
    attributes.add_argument("--device", default=DEVICE)
    return parser.parse_args(argv)


def log_wandb(args: argparse.Namespace, metrics: dict[str, float]) -> None:
    """Log ``metrics`` (e.g. ``{"eval/fid": ...}``) to ``--wandb-run`` (resumed) or a new eval run."""
    import wandb

    config = {k: v for k, v in vars(args).items() if isinstance(v, (str, int, float))}
    resume = "allow" if args.wandb_run else None
    run = wandb.init(project=args.wandb_project, id=args.wandb_run, resume=resume, job_type="eval", config=config)
    run.log(metrics)
    run.summary.update(metrics)
    run.finish()


class SamplingStopped(Exception):
    """Raised by the SIGTERM handler of ``sample``: PNGs are written atomically, so the folder stays resumable."""


def _raise_stopped(signum: int, frame) -> None:
    raise SamplingStopped(signal.Signals(signum).name)


def sample(args: argparse.Namespace) -> int:
    """``sample`` on this rank of a torchrun job (or alone): its share of the prompts, then a check on rank 0.
    SIGTERM stops it saying how many of this rank's images are done (exit 128 + 15); a rerun resumes."""
    from mmengine.config import Config

    device = dist.init()  # gloo on CPU, NCCL on CUDA; a no-op without torchrun
    rank, world = dist.rank(), dist.world_size()
    in_main = threading.current_thread() is threading.main_thread()  # signal handlers can only be set there
    previous = signal.signal(signal.SIGTERM, _raise_stopped) if in_main else None
    prompts = []
    try:
        cfg = Config.fromfile(args.config)
        chosen = chosen_sampler(cfg, args.sampler, steps=args.steps, cfg_scale=args.cfg_scale)
        sampled = sampled_config(cfg, args.checkpoint, chosen.get("name", "dpm"))  # no checkpoint: an LCM's teacher
        pipe = load_pipeline(sampled, args.checkpoint, args.device or device, use_ema=not args.no_ema)
        prompts = read_prompts(args.prompts)[: args.num]
        identity = {
            "config_sha256": config_sha256(cfg.to_dict()),
            "checkpoint": file_identity(args.checkpoint or weight_sources(sampled).base),
            "use_ema": not args.no_ema,
        }
        written = sample_to_folder(
            pipe, prompts, args.out, chosen.get("name", "dpm"), chosen.get("steps"), chosen.get("cfg_scale"),
            args.seed, args.batch_size,
            rank=rank, world_size=world, control=args.control, identity=identity, overwrite=args.overwrite,
        )  # fmt: skip
        print(f"[rank {rank}/{world}] wrote {len(written)} images to {args.out}", flush=True)
        dist.barrier()
        if rank == 0:
            found = len(list_images(args.out))
            if found != len(prompts):
                raise RuntimeError(f"{args.out} has {found} images for {len(prompts)} prompts after sampling")
            print(f"{args.out}: {found} images and prompts.txt")
    except SamplingStopped as stopped:
        print(f"[rank {rank}/{world}] stopped by {stopped}: {_progress(args, prompts, rank, world)}", file=sys.stderr)
        return 128 + signal.SIGTERM
    finally:
        if in_main:
            signal.signal(signal.SIGTERM, previous)
        dist.cleanup()
    return 0


def _progress(args: argparse.Namespace, prompts: list[str], rank: int, world: int) -> str:
    """Where this rank's share of ``sample`` stands on disk, and how to go on."""
    if not prompts:
        return "before sampling began; rerun the same command to resume"
    mine = [i for batch in shard_batches(len(prompts), args.batch_size, rank, world) for i in batch]
    done = [i for i in mine if (Path(args.out) / image_name(i)).is_file()]
    missing = sorted(set(mine) - set(done))
    where = f"; the next is {image_name(missing[0])}" if missing else ""
    return (
        f"{len(done)} of {len(mine)} images of this rank are in {args.out}{where}; rerun the same command to resume "
        "(finished images are kept)"
    )


def feature_extractor(args: argparse.Namespace) -> torch.nn.Module:
    """``--features`` / ``--weights``; the standard FID network has no default weights (nothing is downloaded)."""
    if args.features == "inception" and args.weights is None:
        raise FileNotFoundError(
            "--features inception needs --weights PATH: pytorch-fid's pt_inception-2015-12-05-6726825d.pth as a local "
            "file (where to get it: docs/evaluation.md, 'Evaluation you can compare with other papers')"
        )
    return build_feature_extractor(args.features, args.weights, args.device)


def check_complete(source: str) -> None:
    """A sample folder with a manifest must hold all its images before its FID means anything."""
    if Path(source).is_dir():
        check_sample_folder(source, None, len(list_images(source)))


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.command == "ref":
        extractor = feature_extractor(args)
        features, report = folder_features(extractor, args.data, args.batch_size, args.num)
        mu, sigma = compute_statistics(features)
        save_statistics(args.out, mu, sigma, extractor.name, report.read)
        print(report.summary())
        print(f"wrote {args.out}: mu {mu.shape}, sigma {sigma.shape} ({extractor.name} features)")
    elif args.command == "sample":
        return sample(args)
    elif args.command == "calc":
        check_complete(args.a)
        check_complete(args.b)
        extractor = feature_extractor(args)
        fid, reports = fid_between(args.a, args.b, extractor, args.batch_size)
        for source, report in zip((args.a, args.b), reports):
            print(f"{source}: {report.summary() if report else 'statistics file'}")
        if args.log_wandb:
            log_wandb(args, {"eval/fid": fid})
        print(f"FID ({extractor.name} features):")
        print(f"{fid:.6f}")
    elif args.command == "clip":
        scorer = CLIPScorer.from_folder(args.clip, args.device)
        images, prompts = read_sample_folder(args.folder)
        result = scorer.score(images, prompts, args.batch_size)
        if args.log_wandb:
            log_wandb(args, {"eval/clip_score": result["clip_score"]})
        print(json.dumps(result))
        print(f"{result['clip_score']:.4f}")
    else:
        net = ensure_attribute_net(args.weights, args.device)
        images, prompts = read_sample_folder(args.folder)
        print(json.dumps(attribute_accuracy(net, images, prompts), indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
