"""The rows of the ControlNet ablation (PixArt-delta §4.2-4.3) and their training, for ``tools/reproduce_controlnet.py
--train``: each row is ``configs/controlnet/tiny_controlnet.py`` with a few ``--cfg-options``, trained at the same
number of steps through the one trainer, exactly as ``train_scripts/train_controlnet.py CONFIG --cfg-options ...``
would (``diffusion.engine.launch.train``, not a second loop).

A row's work dir is ``<work_root>/<row name>``. A row whose final checkpoint exists and whose dumped ``config.py``
is the config asked for is not retrained; an interrupted one resumes from its latest checkpoint; a dir holding a run
of another config is refused (the differing keys named), or moved aside with ``replace_stale``.
"""

from __future__ import annotations

import json
import shlex
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from mmengine.config import Config

from diffusion.data import ensure_embedded_default
from diffusion.engine import dist, launch
from diffusion.engine.checkpoint import find_latest, parse_step
from diffusion.experiments.assets import config_hash
from diffusion.paths import repo_path, shown

DEFAULT_CONFIG = repo_path("configs/controlnet/tiny_controlnet.py")


@dataclass(frozen=True)
class Row:
    """One trained row: ``config`` with ``overrides`` (``--cfg-options`` keys and values), in ``<work_root>/name``."""

    name: str
    label: str
    overrides: dict = field(default_factory=dict)
    config: str | Path = DEFAULT_CONFIG


# The committed tiny teacher has 6 blocks, so the paper's N in {1, depth/4, depth/2, depth - 1} (1, 7, 13, 27 of 28)
# is N = 1, 2, 3, 5 here; the UNet baseline keeps the config's 3 copies (encoder blocks -> mirrored skips).
ROWS = [
    Row("n1", "ControlNet-Transformer N = 1", {"controlnet.copy_blocks": 1}),
    Row("n2", "ControlNet-Transformer N = 2 (¼ depth)", {"controlnet.copy_blocks": 2}),
    Row("n3", "ControlNet-Transformer N = 3 (½ depth)", {"controlnet.copy_blocks": 3}),
    Row("n5", "ControlNet-Transformer N = 5 (depth − 1)", {"controlnet.copy_blocks": 5}),
    Row("unet", "ControlNet-UNet baseline (3 encoder copies → mirrored skips)", {"controlnet.topology": "unet"}),
    # route (b): the committed ControlNet (N = 3) on the committed LCM student, consistency-distilled with the control
    Row(
        "b",
        "route (b): controlled LCD of the ControlNet on the LCM student",
        config=repo_path("configs/controlnet/tiny_controlnet_lcm.py"),
    ),
]
ROW_NAMES = [r.name for r in ROWS]


def select_rows(names: list[str]) -> list[Row]:
    """The rows called ``names`` in the order of :data:`ROWS` (all of them for an empty list)."""
    unknown = sorted(set(names) - set(ROW_NAMES))
    if unknown:
        raise SystemExit(f"unknown ablation row(s) {unknown}; expected some of {ROW_NAMES}")
    return [r for r in ROWS if not names or r.name in names]


def train_argv(row: Row, work_dir: Path, steps: int, batch_size: int | None, cfg_options: Sequence[str]) -> list[str]:
    """``train_scripts/train_controlnet.py`` arguments of ``row``: its overrides, then the schedule and the
    ``cfg_options`` (``k=v`` strings) shared by every row, which win."""
    schedule = {"train.max_steps": steps} | ({} if batch_size is None else {"train.batch_size": batch_size})
    pairs = [f"{k}={v}" for k, v in (row.overrides | schedule).items()]
    return [str(row.config), "--work-dir", str(work_dir), "--resume", "auto", "--cfg-options", *pairs, *cfg_options]


def config_diff(found: Config, wanted: Config) -> list[str]:
    """``key: found -> wanted`` for every leaf key (dotted) where two configs differ."""

    def leaves(d: dict, prefix: str = "") -> dict:
        out = {}
        for k, v in d.items():
            out.update(leaves(v, f"{prefix}{k}.") if isinstance(v, dict) else {f"{prefix}{k}": v})
        return out

    a, b = leaves(found.to_dict()), leaves(wanted.to_dict())
    return [f"{k}: {a.get(k, '<unset>')!r} -> {b.get(k, '<unset>')!r}" for k in sorted(a | b) if a.get(k) != b.get(k)]


def run_state(work_dir: Path, cfg: Config, replace_stale: bool) -> str:
    """``'done'`` (final checkpoint of this config), ``'partial'`` (resume it) or ``'new'``. A run of another config
    in ``work_dir`` is a SystemExit naming the differing keys, or with ``replace_stale`` moved aside (not deleted)."""
    dumped, latest = work_dir / "config.py", find_latest(work_dir)
    if not dumped.is_file() and latest is None:
        return "new"
    found = Config.fromfile(str(dumped)) if dumped.is_file() else None
    if found is None or config_hash(found) != config_hash(cfg):
        why = "; ".join(config_diff(found, cfg)) if found is not None else "checkpoints but no config.py"
        if not replace_stale:
            raise SystemExit(f"{work_dir} holds a run of another config ({why}): delete it, pass --replace-stale "
                             "to move it aside, or choose another --work-root")  # fmt: skip
        stale = work_dir.with_name(f"{work_dir.name}.stale.{int(time.time())}")
        work_dir.rename(stale)
        print(f"[ablation] {work_dir} held a run of another config ({why}); moved it to {stale}", file=sys.stderr)
        return "new"
    done = latest is not None and parse_step(latest.name) == cfg.train.max_steps
    return "done" if done else ("partial" if latest is not None else "new")


def ensure_data(cfg: Config) -> None:
    """Make (or complete) the embedded default at ``cfg.data.root`` at the size it was started with; a root of other
    features (no ``embedded_meta.json``) is left as it is."""
    root = Path(cfg.data.root)
    meta = root / "embedded_meta.json"
    if meta.is_file() or not root.exists():
        sizes = json.loads(meta.read_text()) if meta.is_file() else {}
        ensure_embedded_default(root=root, text_encoder_path=cfg.text_encoder.path, progress=True, **sizes)


def train_rows(
    rows: list[Row],
    work_root: Path,
    steps: int,
    batch_size: int | None = None,
    cfg_options: Sequence[str] = (),
    replace_stale: bool = False,
) -> list[tuple[Row, Path]]:
    """Train (or resume, or skip when finished) every row for ``steps`` steps; ``[(row, work_dir)]``. One progress
    line per row on stderr, with the equivalent ``train_controlnet.py`` command."""
    trained = []
    for i, row in enumerate(rows, 1):
        work_dir = work_root / row.name
        argv = train_argv(row, work_dir, steps, batch_size, cfg_options)
        cfg = launch.build_config(launch.parse_args(argv))
        note = dist.portable_precision(cfg)  # bf16 autocast on a CPU without it: fp32, said once per row
        if note:
            print(f"[ablation] {row.name}: {note}", file=sys.stderr, flush=True)
            argv = train_argv(row, work_dir, steps, batch_size, [*cfg_options, "train.mixed_precision=no"])
            cfg = launch.build_config(launch.parse_args(argv))
        state = run_state(work_dir, cfg, replace_stale)
        head = f"[ablation] {i}/{len(rows)} {row.name} ({row.label})"
        if state == "done":
            print(f"{head}: already trained ({steps} steps) in {work_dir}, not retrained", file=sys.stderr, flush=True)
        else:
            ensure_data(cfg)
            latest = find_latest(work_dir)
            start_step = parse_step(latest.name) if state == "partial" else 0
            command = shlex.join(["python", "train_scripts/train_controlnet.py", shown(argv[0]), *argv[1:]])
            print(f"{head}: training steps {start_step}..{steps}: {command}", file=sys.stderr, flush=True)
            start = time.time()
            if not launch.train(argv):
                raise SystemExit(f"{head}: stopped by a signal (checkpoint kept); run the same command to resume")
            print(f"{head}: trained in {time.time() - start:.0f} s", file=sys.stderr, flush=True)
        trained.append((row, work_dir))
    return trained
