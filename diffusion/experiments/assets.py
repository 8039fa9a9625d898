"""Train the embedded default's teacher from scratch and publish it as ``assets/tiny_teacher/`` (``make teacher``).

The tiny teacher stands in for the released PixArt-alpha checkpoint: ``make demo`` starts from it as a real user
starts from PixArt-XL-2-1024-MS. The published file is the final checkpoint's trained weights (the end of a cosine
schedule; the run's EMA stays in its checkpoints), stored in fp16 to stay small, with ``meta.json`` recording the
config hash (a test checks it against ``configs/pixart/tiny_teacher.py``), the text-encoder hash, the wall time and
the measured throughput.

    python tools/make_teacher.py [--config configs/pixart/tiny_teacher.py] [--work-dir output/tiny_teacher_run]
"""

from __future__ import annotations

import argparse
import hashlib
import inspect
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from mmengine.config import Config  # noqa: E402
from safetensors.torch import load_file, save_file  # noqa: E402

from diffusion.data import ensure_embedded_default  # noqa: E402
from diffusion.engine import Trainer, dist, find_latest, require_finished  # noqa: E402
from diffusion.engine.checkpoint import claim_run_dir  # noqa: E402
from diffusion.engine.config import SECTION_DEFAULTS, resolve_section  # noqa: E402
from diffusion.registry import METHODS, MODELS  # noqa: E402

DEFAULT_CONFIG = "configs/pixart/tiny_teacher.py"
ASSET_DIR = Path("assets/tiny_teacher")


UNHASHED_SECTIONS = ("validation", "log")  # what a run shows (sample grids, logs), not what it trains


def config_hash(cfg: Config) -> str:
    """sha256 of what decides the trained weights: the config as the trainer resolves it, without the sections that
    only change what a run shows (``UNHASHED_SECTIONS``) and without any key left at its default (the trainer's
    section defaults, the model's and method's constructor defaults). Moving a value between files, spelling out a
    default or the code gaining a new defaulted option does not change it; changing a value that trains does."""
    resolved = cfg.to_dict()
    for section in UNHASHED_SECTIONS:
        resolved.pop(section, None)
    for section in SECTION_DEFAULTS:
        if resolved.get(section) is not None:
            resolved[section] = _non_default(resolve_section(section, resolved[section]), SECTION_DEFAULTS[section])
    for section, registry in (("model", MODELS), ("method", METHODS)):
        cls = registry.get(resolved[section].get("type")) if isinstance(resolved.get(section), dict) else None
        if cls is not None:
            resolved[section] = _non_default(resolved[section], _init_defaults(cls))
    return hashlib.sha256(json.dumps(resolved, sort_keys=True, default=str).encode()).hexdigest()


def _init_defaults(cls: type) -> dict:
    return {
        name: p.default
        for name, p in inspect.signature(cls.__init__).parameters.items()
        if p.default is not inspect.Parameter.empty
    }


def _non_default(values: dict, defaults: dict) -> dict:
    """``values`` without the keys equal to their default (lists and tuples compare alike)."""

    def same(a, b) -> bool:
        if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
            return list(a) == list(b)
        return type(a) is type(b) and a == b

    return {k: v for k, v in values.items() if not (k in defaults and same(v, defaults[k]))}


def file_hash(path: str | Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def publish(
    checkpoint: Path,
    cfg: Config,
    out_dir: Path,
    extra: dict,
    config_path: str = DEFAULT_CONFIG,
    only_prefix: str | None = None,
) -> Path:
    """Trained weights of ``checkpoint`` -> ``out_dir/model.safetensors`` (fp16) + ``meta.json`` (names
    ``config_path``, the file ``cfg`` was read from). ``only_prefix``: every key must start with it (a ControlNet's
    trainable-only checkpoint holds ``controlnet.*``)."""
    source = checkpoint / "model.safetensors"
    state = {k: v.to(torch.float16) if v.is_floating_point() else v for k, v in load_file(str(source)).items()}
    if only_prefix is not None and (not state or not all(k.startswith(only_prefix) for k in state)):
        raise ValueError(f"{source} is not the expected checkpoint (only {only_prefix}* keys)")
    out_dir.mkdir(parents=True, exist_ok=True)
    save_file(state, str(out_dir / "model.safetensors"), metadata={"config_sha256": config_hash(cfg)})
    meta = dict(config=config_path, config_sha256=config_hash(cfg), source=str(source), **extra)
    (out_dir / "meta.json").write_text(json.dumps(meta, indent=2) + "\n")
    return out_dir / "model.safetensors"


def train_and_publish(
    cfg: Config,
    config_path: str,
    work_dir: str | Path,
    out_dir: str | Path,
    digest: str,
    inputs: Callable[[], dict],
    only_prefix: str | None = None,
) -> Path:
    """The recipe every committed tiny asset follows (teacher, LCM student, ControlNet): make the embedded data, train
    ``cfg`` in ``work_dir`` (claimed for ``digest``; an interrupted run of the same inputs resumes), publish the final
    checkpoint to ``out_dir`` with the run's measurements and ``inputs()`` (hashes of what it was trained from, read
    once the embedded data and its text encoder exist)."""
    start = time.time()
    ensure_embedded_default(root=cfg.data.root, text_encoder_path=cfg.text_encoder.path, progress=True)
    data_s = time.time() - start
    claim_run_dir(work_dir, digest, on_other="error")
    finished = Trainer(cfg, work_dir, resume="auto").train()
    dist.cleanup()
    require_finished(finished, "run the same make target again to resume it; nothing was published")
    wall = time.time() - start
    metrics = [json.loads(line) for line in (Path(work_dir) / "metrics.jsonl").read_text().splitlines()]
    img_s = sorted(m["img_per_s"] for m in metrics)[len(metrics) // 2]
    extra = dict(
        **inputs(),
        steps=cfg.train.max_steps,
        batch_size=cfg.train.batch_size,
        seed=cfg.train.seed,
        wall_time_s=round(wall, 1),
        data_setup_s=round(data_s, 1),
        median_img_per_s=round(img_s, 1),
        final_loss=metrics[-1]["loss"],
        torch=torch.__version__,
    )
    out = publish(find_latest(work_dir), cfg, Path(out_dir), extra, config_path, only_prefix)
    print(f"published {out} ({out.stat().st_size / 1e6:.1f} MB) after {wall / 60:.1f} min; {json.dumps(extra)}")
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default=DEFAULT_CONFIG)
    parser.add_argument("--work-dir", default="output/tiny_teacher_run")
    parser.add_argument("--out", default=str(ASSET_DIR))
    args = parser.parse_args(argv)
    cfg = Config.fromfile(args.config)
    inputs = lambda: dict(text_encoder_sha256=file_hash(Path(cfg.text_encoder.path) / "model.safetensors"))  # noqa: E731
    train_and_publish(cfg, args.config, args.work_dir, args.out, config_hash(cfg), inputs)


if __name__ == "__main__":
    main()
