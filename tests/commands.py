"""The commands under test. ``tools/*.py`` and ``train_scripts/*.py`` are scripts, not a package: a test loads one
from its file and calls its ``main(argv)`` (or its ``parse_args``) in-process, as ``python tools/X.py ARGS`` would
run it, without the import of torch and the config that a subprocess per call would repeat."""

from __future__ import annotations

import importlib.util
import sys
from functools import cache
from pathlib import Path
from types import ModuleType

REPO = Path(__file__).resolve().parents[1]


@cache
def load_command(path: str) -> ModuleType:
    """The command ``path`` (relative to the checkout, e.g. ``"tools/sample.py"``) as a module, loaded once.

    It is registered in ``sys.modules`` as ``command.tools.sample`` (dataclasses and pickling look a module up by
    name); ``monkeypatch.setattr(load_command(...), "name", ...)`` patches what its ``main`` calls."""
    file = REPO / path
    if not file.is_file() or file.suffix != ".py":
        raise FileNotFoundError(f"no command {path} in {REPO}")
    name = "command." + file.relative_to(REPO).with_suffix("").as_posix().replace("/", ".")
    spec = importlib.util.spec_from_file_location(name, file)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module
