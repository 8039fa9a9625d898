"""Where the checkout is, so that every command runs from any folder.

The project installs itself into its venv in editable mode (``make test`` / ``make demo``), so this package is imported
from the checkout and :data:`ROOT` is the checkout's root. Three kinds of path, three rules:

- a command's *default* that names a committed file (a config under ``configs/``, an asset under ``assets/``) is
  :func:`repo_path`: absolute, found wherever the command runs;
- a path a person types (``--config``, ``--out``, a checkpoint) is relative to the current folder, as in any command;
- a file a config names for reading (its ``weights`` section: ``weights.base = "assets/…"``, ``weights.teacher``,
  ``weights.controlnet``, ``weights.null_caption``) is :func:`config_path` (``diffusion.build.Weights.files``):
  relative to the current folder when it is there, else relative to the checkout when it is there (the repo's configs
  name committed assets, so ``python /repo/tools/app.py`` works from any folder), else an error naming both places. The
  config keeps its text, so a config hash that names a file stays the same on every machine and from every folder;
  other paths in a config (``data.root = "output/…"``) are relative to the current folder.

Outputs (``output/…`` defaults: run dirs, tables, grids, the embedded data a config's ``data.root`` names) land under
the current folder.
"""

from __future__ import annotations

import os
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def repo_path(relative: str | Path) -> Path:
    """``relative`` (e.g. ``"configs/lcm/tiny_lcm.py"``) inside the checkout, as an absolute path."""
    if Path(relative).is_absolute():
        raise ValueError(f"repo_path takes a path relative to the checkout, got {relative}")
    return ROOT / relative


def shown(path: str | Path) -> str:
    """``path`` relative to the checkout when it lies inside it (as commands print and records store it), else as
    given: ``/…/checkout/configs/x.py`` -> ``configs/x.py``."""
    try:
        return Path(path).resolve().relative_to(ROOT).as_posix()
    except ValueError:
        return str(path)


def config_path(value: str | os.PathLike, key: str = "load_from", required: bool = True) -> Path:
    """The file a config's ``key`` names (``value``), as the loaders open it: an absolute path as it is; a relative one
    in the current folder when it exists there, else in the checkout (:data:`ROOT`) when it exists there.

    Neither: ``FileNotFoundError`` naming the key and both places (``required``), else the current folder's path (for
    a caller that treats a missing file itself)."""
    path = Path(value)
    if path.is_absolute() or path.exists():
        return path
    in_checkout = ROOT / path
    if in_checkout.exists():
        return in_checkout
    if required:
        raise FileNotFoundError(
            f"config key '{key}' = {str(value)!r} not found: neither in the current folder ({Path.cwd() / path}) nor "
            f"in the checkout ({in_checkout})"
        )
    return path
