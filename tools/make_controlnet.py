"""Train the embedded default's ControlNet-Transformer on the committed tiny teacher and publish it as
``assets/tiny_controlnet/`` (``make controlnet``, PixArt-delta §4).

The published file holds the trainable weights only (``controlnet.*``: the copies and zero linears, fp16, a few MB);
the frozen base is the config's ``load_from`` (``assets/tiny_teacher``), exactly as a training checkpoint, so
``load_model(cfg, "assets/tiny_controlnet/model.safetensors")`` rebuilds the full ControlNet. ``meta.json`` records
the config hash (a test checks it against ``configs/controlnet/tiny_controlnet.py``), the teacher's hash, the wall time
and the measured throughput.

    python tools/make_controlnet.py [--config configs/controlnet/tiny_controlnet.py] [--work-dir DIR] [--out DIR]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from mmengine.config import Config  # noqa: E402

from tools.make_teacher import config_hash, file_hash, train_and_publish  # noqa: E402

DEFAULT_CONFIG = "configs/controlnet/tiny_controlnet.py"
ASSET_DIR = Path("assets/tiny_controlnet")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default=DEFAULT_CONFIG)
    parser.add_argument("--work-dir", default="output/tiny_controlnet_run")
    parser.add_argument("--out", default=str(ASSET_DIR))
    args = parser.parse_args(argv)
    cfg = Config.fromfile(args.config)
    inputs = lambda: dict(teacher_sha256=file_hash(cfg.load_from))  # noqa: E731
    train_and_publish(cfg, args.config, args.work_dir, args.out, config_hash(cfg), inputs, only_prefix="controlnet.")


if __name__ == "__main__":
    main()
