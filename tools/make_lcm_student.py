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
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from mmengine.config import Config  # noqa: E402

from diffusion.data import ensure_embedded_default  # noqa: E402
from diffusion.engine import Trainer, dist, find_latest  # noqa: E402
from diffusion.engine.checkpoint import claim_run_dir  # noqa: E402
from tools.make_teacher import config_hash, file_hash, publish  # noqa: E402

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
    start = time.time()
    ensure_embedded_default(root=cfg.data.root, text_encoder_path=cfg.text_encoder.path, progress=True)
    data_s = time.time() - start
    claim_run_dir(args.work_dir, run_digest(cfg), on_other="error")
    Trainer(cfg, args.work_dir, resume="auto").train()  # resumes an interrupted run of the same inputs
    dist.cleanup()
    wall = time.time() - start
    metrics = [json.loads(line) for line in (Path(args.work_dir) / "metrics.jsonl").read_text().splitlines()]
    img_s = sorted(m["img_per_s"] for m in metrics)[len(metrics) // 2]
    extra = dict(
        teacher=cfg.load_from,
        teacher_sha256=file_hash(cfg.load_from),
        steps=cfg.train.max_steps,
        batch_size=cfg.train.batch_size,
        seed=cfg.train.seed,
        wall_time_s=round(wall, 1),
        data_setup_s=round(data_s, 1),
        median_img_per_s=round(img_s, 1),
        final_loss=metrics[-1]["loss"],
        text_encoder_sha256=file_hash(Path(cfg.text_encoder.path) / "model.safetensors"),
        torch=torch.__version__,
    )
    out = publish(find_latest(args.work_dir), cfg, Path(args.out), extra, args.config)
    print(f"published {out} ({out.stat().st_size / 1e6:.1f} MB) after {wall / 60:.1f} min; {json.dumps(extra)}")


if __name__ == "__main__":
    main()
