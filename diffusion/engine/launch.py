"""A training run from its command line: parse, load the config, hand over to the trainer. Shared by the training
commands (``train_scripts/train.py``, ``train_lcm.py``, ``train_controlnet.py``: each a default config over this),
the fault drill's training child and the ControlNet ablation, so that every run starts exactly the same way.

    python train_scripts/train.py CONFIG [--work-dir DIR] [--resume auto|PATH] [--cfg-options k=v ...]
    torchrun --nproc_per_node N [--nnodes M ...] train_scripts/train.py CONFIG ...
"""

from __future__ import annotations

import argparse
from pathlib import Path

from mmengine.config import Config, DictAction

from diffusion.engine import Trainer, dist

DEFAULT_OUTPUT_ROOT = "output"


def parse_args(
    argv: list[str] | None = None, default_config: str | Path | None = None, description: str | None = __doc__
) -> argparse.Namespace:
    """Command-line arguments; ``default_config`` makes CONFIG optional (``train_lcm.py``, ``train_controlnet.py``);
    ``description``: the command's usage (its docstring)."""
    parser = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("config", nargs="?" if default_config else None, default=default_config, help="config file")
    parser.add_argument("--work-dir", default=None, help=f"default {DEFAULT_OUTPUT_ROOT}/<config stem>")
    parser.add_argument("--resume", default=None, help="'auto' or a checkpoint dir")
    parser.add_argument("--cfg-options", nargs="+", action=DictAction, default={}, help="override config keys: k=v")
    return parser.parse_args(argv)


def build_config(args: argparse.Namespace) -> Config:
    """The config a run of ``args`` trains: ``args.config`` with ``args.cfg_options`` merged in."""
    cfg = Config.fromfile(str(args.config))
    if args.cfg_options:
        cfg.merge_from_dict(args.cfg_options)
    return cfg


def train(
    argv: list[str] | None = None, default_config: str | Path | None = None, description: str | None = __doc__
) -> bool:
    """Parse ``argv`` (default ``sys.argv[1:]``), build the config and train; single process without torchrun.
    Returns whether the run reached ``max_steps`` (False: stopped by SIGTERM / SIGINT after a checkpoint; the
    command still exits 0, as a launcher expects)."""
    args = parse_args(argv, default_config, description)
    cfg = build_config(args)
    work_dir = args.work_dir or str(Path(DEFAULT_OUTPUT_ROOT) / Path(args.config).stem)
    try:
        return Trainer(cfg, work_dir, resume=args.resume).train()
    finally:
        dist.cleanup()
