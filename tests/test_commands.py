"""Every command is an entry point that runs from any folder: ``tools/*.py`` and ``train_scripts/*.py`` answer
``--help`` with their usage when started from a temporary folder, ``import diffusion`` there is this checkout (the
editable install of ``make test``; nothing edits the import path), and no command imports another."""

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.commands import REPO

COMMANDS = sorted(REPO.glob("tools/*.py")) + sorted(REPO.glob("train_scripts/*.py"))

# All commands in one interpreter (torch is imported once): each ``--help`` through runpy as ``__main__``.
HELP_ALL = """
import contextlib, io, json, runpy, sys
results = {}
for path in sys.argv[1:]:
    out, code = io.StringIO(), None
    sys.argv = [path, "--help"]
    with contextlib.redirect_stdout(out):
        try:
            runpy.run_path(path, run_name="__main__")
        except SystemExit as exit:
            code = exit.code
    results[path] = [code, out.getvalue()]
print(json.dumps(results))
"""


def _tree(path: Path) -> ast.Module:
    return ast.parse(path.read_text(), str(path))


def test_commands_are_entry_points():
    assert COMMANDS and not (REPO / "tools/__init__.py").exists() and not (REPO / "train_scripts/__init__.py").exists()
    for path in COMMANDS:
        tree = _tree(path)
        name = path.relative_to(REPO)
        assert ast.get_docstring(tree), f"{name}: its module docstring is its usage"
        assert any(isinstance(n, ast.FunctionDef) and n.name == "main" for n in tree.body), f"{name}: no main()"
        guard = [n for n in tree.body if isinstance(n, ast.If) and "__main__" in ast.unparse(n.test)]
        assert guard, f"{name}: no `if __name__ == '__main__':`"


def test_no_path_edits_and_no_command_imports_another():
    """Commands share code through packages, never through each other, and nothing touches the import path list."""
    files = [p for p in REPO.glob("**/*.py") if not p.relative_to(REPO).parts[0].startswith((".", "output"))]
    for path in files:
        tree = _tree(path)
        name = path.relative_to(REPO)
        for node in ast.walk(tree):
            if isinstance(node, ast.Attribute) and node.attr == "path" and ast.unparse(node.value) == "sys":
                pytest.fail(f"{name}:{node.lineno} edits the import path (install the project instead: make venv)")
            modules = []
            if isinstance(node, ast.Import):
                modules = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0:
                modules = [node.module or ""]
            for module in modules:
                assert module.split(".")[0] not in ("tools", "train_scripts"), f"{name}:{node.lineno} imports {module}"


def test_the_library_never_imports_an_application():
    """docs/design.md "Where everything lives": commands -> applications (app, drill, experiments) -> library."""
    applications = ("diffusion.app", "diffusion.drill", "diffusion.experiments")
    for path in sorted((REPO / "diffusion").glob("**/*.py")):
        if path.relative_to(REPO / "diffusion").parts[0] in ("app", "drill", "experiments"):
            continue
        for node in ast.walk(_tree(path)):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else []
            names += [node.module or ""] if isinstance(node, ast.ImportFrom) else []
            bad = [n for n in names if n.startswith(applications)]
            assert not bad, f"{path.relative_to(REPO)}:{node.lineno} imports the application {bad[0]}"


def test_every_command_answers_help_from_another_folder(tmp_path):
    cmd = [sys.executable, "-c", HELP_ALL, *map(str, COMMANDS)]
    result = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    results = json.loads(result.stdout.strip().splitlines()[-1])
    for path in COMMANDS:
        code, out = results[str(path)]
        assert code == 0, f"{path.name} --help exited with {code}:\n{out}"
        assert out.startswith(f"usage: {path.name}"), f"{path.name} --help:\n{out}"
        usage = " ".join(ast.get_docstring(_tree(path)).split())
        assert usage in " ".join(out.split()), f"{path.name} --help does not show its usage (module docstring):\n{out}"
    assert not list(tmp_path.iterdir()), "--help wrote files"


@pytest.mark.parametrize("command", ["tools/sample.py", "train_scripts/train.py"])
def test_a_command_runs_as_a_script_from_another_folder(tmp_path, command):
    """``python /abs/path/tools/X.py``: the script's folder, not the checkout, is on the path, as for a user."""
    result = subprocess.run(
        [sys.executable, str(REPO / command), "--help"], cwd=tmp_path, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0 and result.stdout.startswith(f"usage: {Path(command).name}"), result.stderr[-3000:]


def test_import_diffusion_outside_the_checkout_is_this_checkout(tmp_path):
    probe = "import diffusion, diffusion.paths as p; print(diffusion.__file__); print(p.ROOT)"
    result = subprocess.run([sys.executable, "-c", probe], cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, f"diffusion is not importable outside the checkout (make venv): {result.stderr}"
    init, root = result.stdout.split()
    assert Path(init) == REPO / "diffusion/__init__.py" and Path(root) == REPO
