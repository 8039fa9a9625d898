"""The committed tiny assets of the embedded default (``assets/tiny_teacher``, ``assets/tiny_lcm``,
``assets/tiny_controlnet``): how each is trained and published, and the hashes that tie it to its config.

Each stands in for a released checkpoint (PixArt-XL-2-1024-MS, PixArt-LCM, the PixArt-δ ControlNet) so that
``make demo`` and ``make app`` start from trained weights as a real user does. One recipe, :func:`train_and_publish`:
make the embedded data, train the config through the one trainer, publish the final checkpoint's trained weights in
fp16 (to stay small) with ``meta.json`` recording the config hash (tests check it against the config), the hashes of
what it was trained from, the wall time and the measured throughput. The commands are ``tools/make_teacher.py``,
``tools/make_lcm_student.py`` and ``tools/make_controlnet.py`` (``make teacher``, ``make lcm-student``,
``make controlnet``).
"""

from __future__ import annotations

import hashlib
import inspect
import json
import time
from collections.abc import Callable
from pathlib import Path

import torch
from mmengine.config import Config
from safetensors.torch import load_file, save_file

from diffusion.build import Weights, weight_sources
from diffusion.config import SECTION_DEFAULTS, resolve_section, without_moved_weight_keys
from diffusion.data import ensure_embedded_default
from diffusion.engine import Trainer, dist, find_latest, require_finished
from diffusion.engine.checkpoint import claim_run_dir
from diffusion.paths import repo_path, shown
from diffusion.registry import METHODS, MODELS

TEACHER_CONFIG = repo_path("configs/pixart/tiny_teacher.py")
TEACHER_DIR = repo_path("assets/tiny_teacher")
LCM_CONFIG = repo_path("configs/lcm/tiny_lcm_student.py")  # make demo's distillation cut at 100 steps
LCM_DIR = repo_path("assets/tiny_lcm")
CONTROLNET_CONFIG = repo_path("configs/controlnet/tiny_controlnet.py")
CONTROLNET_DIR = repo_path("assets/tiny_controlnet")

UNHASHED_SECTIONS = ("validation", "log")  # what a run shows (sample grids, logs), not what it trains


def config_hash(cfg: Config) -> str:
    """sha256 of what decides the trained weights: the config as the trainer resolves it, without the sections that
    only change what a run shows (``UNHASHED_SECTIONS``) and without any key left at its default (the trainer's
    section defaults, the model's and method's constructor defaults). Moving a value between files, spelling out a
    default or the code gaining a new defaulted option does not change it; changing a value that trains does. The
    weight sources are hashed as resolved (:func:`hashed_weights`), so a config keeps its hash across their rename."""
    resolved = without_moved_weight_keys(cfg.to_dict() if hasattr(cfg, "to_dict") else dict(cfg))
    sources = weight_sources(resolved)
    resolved.pop("weights", None)
    for section in UNHASHED_SECTIONS:
        resolved.pop(section, None)
    for section in SECTION_DEFAULTS:
        if resolved.get(section) is not None:
            resolved[section] = _non_default(resolve_section(section, resolved[section]), SECTION_DEFAULTS[section])
    for section, registry in (("model", MODELS), ("method", METHODS)):
        cls = registry.get(resolved[section].get("type")) if isinstance(resolved.get(section), dict) else None
        if cls is not None:
            resolved[section] = _non_default(resolved[section], _init_defaults(cls))
    hashed_weights(resolved, sources)
    return hashlib.sha256(json.dumps(resolved, sort_keys=True, default=str).encode()).hexdigest()


def hashed_weights(resolved: dict, sources: Weights) -> None:
    """Put the resolved weight ``sources`` into ``resolved`` (the hashed form of a config) under the names they had
    when the committed assets were hashed: ``load_from`` (the base, also of a student given ``weights.teacher``),
    ``controlnet.load_from``, ``method.teacher_load_from`` (a teacher named apart from the base) and
    ``null_caption``; unset ones are left out, as keys at their default were. Two spellings of the same sources
    (old keys, or ``weights.teacher`` vs ``weights.base`` for an LCM student) hash alike."""
    placed = {
        ("load_from",): sources.base,
        ("controlnet", "load_from"): sources.controlnet,
        ("method", "teacher_load_from"): sources.teacher if sources.teacher_apart else None,
        ("null_caption",): sources.null_caption,
    }
    for path, value in placed.items():
        if value is None:
            continue
        holder = resolved
        for key in path[:-1]:
            if holder.get(key) is None:
                holder[key] = {}
            holder = holder[key]
        holder[path[-1]] = value


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
    config_path: str | Path = TEACHER_CONFIG,
    only_prefix: str | None = None,
) -> Path:
    """Trained weights of ``checkpoint`` -> ``out_dir/model.safetensors`` (fp16) + ``meta.json`` (names
    ``config_path``, the file ``cfg`` was read from, relative to the checkout when inside it). ``only_prefix``: every
    key must start with it (a ControlNet's trainable-only checkpoint holds ``controlnet.*``)."""
    source = checkpoint / "model.safetensors"
    state = {k: v.to(torch.float16) if v.is_floating_point() else v for k, v in load_file(str(source)).items()}
    if only_prefix is not None and (not state or not all(k.startswith(only_prefix) for k in state)):
        raise ValueError(f"{source} is not the expected checkpoint (only {only_prefix}* keys)")
    out_dir.mkdir(parents=True, exist_ok=True)
    save_file(state, str(out_dir / "model.safetensors"), metadata={"config_sha256": config_hash(cfg)})
    meta = dict(config=shown(config_path), config_sha256=config_hash(cfg), source=str(source), **extra)
    (out_dir / "meta.json").write_text(json.dumps(meta, indent=2) + "\n")
    return out_dir / "model.safetensors"


def train_and_publish(
    cfg: Config,
    config_path: str | Path,
    work_dir: str | Path,
    out_dir: str | Path,
    digest: str,
    inputs: Callable[[], dict],
    only_prefix: str | None = None,
    on_other: str = "error",
) -> Path:
    """The recipe every committed tiny asset follows (teacher, LCM student, ControlNet): make the embedded data, train
    ``cfg`` in ``work_dir`` (claimed for ``digest``; an interrupted run of the same inputs resumes; a run of other
    inputs there is ``on_other``: ``"error"`` or ``"move"``d aside, see ``claim_run_dir``), publish the final
    checkpoint to ``out_dir`` with the run's measurements and ``inputs()`` (hashes of what it was trained from, read
    once the embedded data and its text encoder exist)."""
    start = time.time()
    ensure_embedded_default(root=cfg.data.root, text_encoder_path=cfg.text_encoder.path, progress=True)
    data_s = time.time() - start
    claim_run_dir(work_dir, digest, on_other=on_other)
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


def make_teacher(
    config: str | Path = TEACHER_CONFIG,
    work_dir: str | Path = "output/tiny_teacher_run",
    out: str | Path = TEACHER_DIR,
) -> Path:
    """Train the tiny teacher (PixArt-α on the embedded default) from scratch and publish it to ``out``."""
    cfg = Config.fromfile(str(config))
    inputs = lambda: dict(text_encoder_sha256=file_hash(Path(cfg.text_encoder.path) / "model.safetensors"))  # noqa: E731
    return train_and_publish(cfg, config, work_dir, out, config_hash(cfg), inputs)


def lcm_run_digest(cfg: Config) -> str:
    """What the student depends on: the resolved config and the teacher file it distils (``weights.teacher``)."""
    return hashlib.sha256((config_hash(cfg) + file_hash(weight_sources(cfg).teacher)).encode()).hexdigest()


def make_lcm_student(
    config: str | Path = LCM_CONFIG, work_dir: str | Path = "output/tiny_lcm_run", out: str | Path = LCM_DIR
) -> Path:
    """Distil the committed teacher (the config's ``weights.teacher``) into the 4-step LCM student (PixArt-δ §3) and
    publish it to ``out``."""
    cfg = Config.fromfile(str(config))
    teacher = weight_sources(cfg).teacher
    if teacher is None or not Path(teacher).is_file():
        raise SystemExit(f"teacher {teacher} (weights.teacher of {config}) is missing: run make teacher first")

    def inputs() -> dict:
        text_encoder = Path(cfg.text_encoder.path) / "model.safetensors"
        return dict(teacher=teacher, teacher_sha256=file_hash(teacher), text_encoder_sha256=file_hash(text_encoder))

    return train_and_publish(cfg, config, work_dir, out, lcm_run_digest(cfg), inputs)


def make_controlnet(
    config: str | Path = CONTROLNET_CONFIG,
    work_dir: str | Path = "output/tiny_controlnet_run",
    out: str | Path = CONTROLNET_DIR,
) -> Path:
    """Train the ControlNet-Transformer (PixArt-δ §4) on the committed teacher and publish its trainable weights
    (``controlnet.*``; the frozen base is the config's ``weights.base``) to ``out``."""
    cfg = Config.fromfile(str(config))
    inputs = lambda: dict(teacher_sha256=file_hash(weight_sources(cfg).base))  # noqa: E731
    return train_and_publish(cfg, config, work_dir, out, config_hash(cfg), inputs, only_prefix="controlnet.")
