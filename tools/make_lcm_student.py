"""Distil the committed tiny teacher into the embedded default's 4-step LCM student, published as
``assets/tiny_lcm/`` (``make lcm-student``), so that ``make app`` starts on a fresh clone without training.

This is the PixArt-delta LCM distillation (§3, Algorithm 1) of ``make demo``, cut at 100 steps
(``configs/lcm/tiny_lcm_student.py``; same seed, constant learning rate), published the way ``make teacher``
publishes the teacher: the final checkpoint's student weights in fp16 plus ``meta.json`` recording the config hash
and the teacher's file hash (a test checks both against the repository), the wall time and the measured throughput.

    python tools/make_lcm_student.py [--config configs/lcm/tiny_lcm_student.py] [--work-dir output/tiny_lcm_run]
"""

from __future__ import annotations

import argparse
import hashlib
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from mmengine.config import Config  # noqa: E402

from tools.make_teacher import config_hash, file_hash, train_and_publish  # noqa: E402

DEFAULT_CONFIG = "configs/lcm/tiny_lcm_student.py"
ASSET_DIR = Path("assets/tiny_lcm")


def run_digest(cfg: Config) -> str:
    """What the student depends on: the resolved config and the teacher file it distils (``cfg.load_from``)."""
    return hashlib.sha256((config_hash(cfg) + file_hash(cfg.load_from)).encode()).hexdigest()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default=DEFAULT_CONFIG)
    parser.add_argument("--work-dir", default="output/tiny_lcm_run")
    parser.add_argument("--out", default=str(ASSET_DIR))
    args = parser.parse_args(argv)
    cfg = Config.fromfile(args.config)
    if not Path(cfg.load_from).is_file():
        raise SystemExit(f"teacher {cfg.load_from} (load_from of {args.config}) is missing: run make teacher first")

    def inputs() -> dict:
        text_encoder = Path(cfg.text_encoder.path) / "model.safetensors"
        return dict(
            teacher=cfg.load_from, teacher_sha256=file_hash(cfg.load_from), text_encoder_sha256=file_hash(text_encoder)
        )

    train_and_publish(cfg, args.config, args.work_dir, args.out, run_digest(cfg), inputs)


if __name__ == "__main__":
    main()
