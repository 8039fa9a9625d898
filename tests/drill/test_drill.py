"""The fault drill's fast subset (a SIGKILL mid-run, misspelt keys, a wrong-architecture checkpoint, a .pth carrying
code); the whole drill (``make drill``) and its shard scenarios are marked slow."""

import sys
import time
from pathlib import Path

import psutil
import pytest

from diffusion.drill.runner import HUNG, Drill
from diffusion.drill.scenarios import run
from diffusion.drill.shard_scenarios import SHARD_SCENARIOS


def _drill(tmp_path, capsys, only):
    injected, survived, lost = run(tmp_path / "drill", only)
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[-1] == f"faults injected: {injected}, survived: {injected}, data lost: 0", lines
    assert survived == injected and lost == 0
    return injected


def test_fast_subset(tmp_path, capsys):
    assert _drill(tmp_path, capsys, ["sigkill_mid_run", "config_and_checkpoint_errors"]) == 7
    assert not (tmp_path / "drill" / "code_was_executed").exists()


@pytest.mark.slow
def test_whole_drill(tmp_path, capsys):
    assert _drill(tmp_path, capsys, None) >= 22


@pytest.mark.slow  # ~3 min on the 2 shared cores: two reference runs, 5 shard runs and 2 resumes
def test_shard_scenarios(tmp_path, capsys):
    """Training from shards: SIGKILL mid-epoch and a group SIGTERM resume exactly, a corrupt member and a missing
    shard are named."""
    assert _drill(tmp_path, capsys, list(SHARD_SCENARIOS)) == 4


def test_a_hung_run_is_killed_with_its_workers(tmp_path):
    # a launcher whose worker sits in a session of its own, as torchrun's do, and neither ever exits
    worker = "import os, time; os.setsid(); print(os.getpid(), flush=True); time.sleep(600)"
    launcher = f"import subprocess, sys, time; subprocess.Popen([sys.executable, '-c', {worker!r}]); time.sleep(600)"
    drill = Drill(tmp_path)
    proc = drill.start([sys.executable, "-c", launcher], tmp_path / "hang")
    deadline = time.time() + 20
    while not Path(f"{proc.logs}.out").read_text().strip() and time.time() < deadline:
        time.sleep(0.05)
    worker_pid = int(Path(f"{proc.logs}.out").read_text())
    result = drill.finish(proc, timeout=1)
    assert result.returncode == HUNG and "no exit after 1 s (a hang), killed" in result.stderr
    deadline = time.time() + 10
    while psutil.pid_exists(worker_pid) and psutil.Process(worker_pid).status() != psutil.STATUS_ZOMBIE:
        assert time.time() < deadline, "the worker outlived the drill's kill"
        time.sleep(0.05)
