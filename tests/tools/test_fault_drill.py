"""The fault drill's fast subset (a SIGKILL mid-run, misspelt keys, a wrong-architecture checkpoint, a .pth carrying
code); the whole drill (``make drill``) is marked slow."""

import pytest

from tools import fault_drill


def _drill(tmp_path, capsys, only):
    injected, survived, lost = fault_drill.run(tmp_path / "drill", only)
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[-1] == f"faults injected: {injected}, survived: {injected}, data lost: 0", lines
    assert survived == injected and lost == 0
    return injected


def test_fast_subset(tmp_path, capsys):
    assert _drill(tmp_path, capsys, ["sigkill_mid_run", "config_and_checkpoint_errors"]) == 7
    assert not (tmp_path / "drill" / "code_was_executed").exists()


@pytest.mark.slow
def test_whole_drill(tmp_path, capsys):
    assert _drill(tmp_path, capsys, None) >= 18
