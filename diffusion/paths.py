"""Where the checkout is, so that every command runs from any folder.

The project installs itself into its venv in editable mode (``make test`` / ``make demo``), so this package is imported
from the checkout and :data:`ROOT` is the checkout's root. Three kinds of path, three rules:

- a command's *default* that names a committed file (a config under ``configs/``, an asset under ``assets/``) is
  :func:`repo_path`: absolute, found wherever the command runs;
- a path a person types (``--config``, ``--out``, a checkpoint) is relative to the current folder, as in any command;
- a path written inside a config (``weights = dict(base="assets/…")``, ``data.root = "output/…"``) is relative to the
  current folder too: the repo's configs are run from the checkout (``make`` does), and a config hash that names a
  file stays the same on every machine.

Outputs (``output/…`` defaults: run dirs, tables, grids) land under the current folder.
"""

from __future__ import annotations

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
