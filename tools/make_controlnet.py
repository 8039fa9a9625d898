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
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from mmengine.config import Config  # noqa: E402
from safetensors.torch import load_file, save_file  # noqa: E402

from diffusion.data import ensure_embedded_default  # noqa: E402
from diffusion.engine import Trainer, dist, find_latest  # noqa: E402
from diffusion.engine.checkpoint import claim_run_dir  # noqa: E402
from tools.make_teacher import config_hash, file_hash  # noqa: E402

DEFAULT_CONFIG = "configs/controlnet/tiny_controlnet.py"
ASSET_DIR = Path("assets/tiny_controlnet")


def publish(checkpoint: Path, cfg: Config, config: str, out_dir: Path, extra: dict) -> Path:
    """Trainable weights of ``checkpoint`` -> ``out_dir/model.safetensors`` (fp16) + ``meta.json``."""
    source = checkpoint / "model.safetensors"
    state = {k: v.to(torch.float16) if v.is_floating_point() else v for k, v in load_file(str(source)).items()}
    if not state or not all(k.startswith("controlnet.") for k in state):
        raise ValueError(f"{source} is not a ControlNet training checkpoint (expected only controlnet.* keys)")
    out_dir.mkdir(parents=True, exist_ok=True)
    save_file(state, str(out_dir / "model.safetensors"), metadata={"config_sha256": config_hash(cfg)})
    meta = dict(config=config, config_sha256=config_hash(cfg), source=str(source), **extra)
    (out_dir / "meta.json").write_text(json.dumps(meta, indent=2) + "\n")
    return out_dir / "model.safetensors"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default=DEFAULT_CONFIG)
    parser.add_argument("--work-dir", default="output/tiny_controlnet_run")
    parser.add_argument("--out", default=str(ASSET_DIR))
    args = parser.parse_args(argv)
    cfg = Config.fromfile(args.config)
    start = time.time()
    ensure_embedded_default(root=cfg.data.root, text_encoder_path=cfg.text_encoder.path, progress=True)
    data_s = time.time() - start
    claim_run_dir(args.work_dir, config_hash(cfg), on_other="error")
    Trainer(cfg, args.work_dir, resume="auto").train()  # resumes an interrupted run of the same config
    dist.cleanup()
    wall = time.time() - start
    metrics = [json.loads(line) for line in (Path(args.work_dir) / "metrics.jsonl").read_text().splitlines()]
    img_s = sorted(m["img_per_s"] for m in metrics)[len(metrics) // 2]
    extra = dict(
        steps=cfg.train.max_steps,
        batch_size=cfg.train.batch_size,
        seed=cfg.train.seed,
        wall_time_s=round(wall, 1),
        data_setup_s=round(data_s, 1),
        median_img_per_s=round(img_s, 1),
        final_loss=metrics[-1]["loss"],
        teacher_sha256=file_hash(cfg.load_from),
        torch=torch.__version__,
    )
    out = publish(find_latest(args.work_dir), cfg, args.config, Path(args.out), extra)
    print(f"published {out} ({out.stat().st_size / 1e6:.1f} MB) after {wall / 60:.1f} min; {json.dumps(extra)}")


if __name__ == "__main__":
    main()
