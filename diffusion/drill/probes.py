"""What the fault drill reads and does around its training runs: losses and metrics of a run dir, the feature files
it corrupts, hashes and sizes of checkpoints, a tmpfs for the full disk, killing a process tree, the tail of a log,
and a checkpoint that carries code.
"""

import json
import os
import re
import shutil
import subprocess
from pathlib import Path

PROGRESS_BAR = re.compile(r"\d+(\.\d+)?(it/s|s/it)\]")  # a tqdm line


class CodeCarrier:
    """Unpickling this runs ``open(marker, 'w')``: a checkpoint that carries code."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


def losses(work: Path) -> list[float]:
    path = Path(work) / "metrics.jsonl"
    if not path.is_file():
        return []
    losses = []
    for line in path.read_text().splitlines():
        try:
            losses.append(json.loads(line)["loss"])
        except (ValueError, KeyError):  # the line a running process is writing
            continue
    return losses


def last_metric(work: Path, key: str):
    """``key`` of the last complete line of ``metrics.jsonl`` (None when absent)."""
    path = Path(work) / "metrics.jsonl"
    for line in reversed(path.read_text().splitlines() if path.is_file() else []):
        try:
            return json.loads(line)[key]
        except (ValueError, KeyError):
            continue
    return None


def feature_file(root: Path, image_path: str, pattern: str) -> Path:
    """The cache file of the data_info item ``image_path`` (its file stem is in the feature name)."""
    stem = Path(image_path).stem
    found = [p for p in root.glob(pattern) if stem in p.name]
    if len(found) != 1:
        raise SystemExit(f"drill: expected one {pattern} file for {image_path}, found {found}")
    return found[0]


def hashes(folder: Path) -> dict[str, str]:
    import hashlib

    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir())}


def du(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


def mount_tmpfs(path: Path, size: int) -> bool:
    path.mkdir(parents=True, exist_ok=True)
    if os.geteuid() != 0 or shutil.which("mount") is None:
        return False
    result = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)], capture_output=True)
    return result.returncode == 0


def kill_tree(pid: int) -> None:
    """SIGKILL ``pid`` and every process below it (torchrun starts its workers in sessions of their own, so a
    process-group kill would leave them running)."""
    import psutil

    try:
        root = psutil.Process(pid)
        procs = root.children(recursive=True) + [root]
    except psutil.NoSuchProcess:
        return
    for proc in procs:
        try:
            proc.kill()
        except psutil.NoSuchProcess:
            continue


def tail(result: subprocess.CompletedProcess, chars: int = 600) -> str:
    """The return code and the last ``chars`` of stderr, progress bars left out."""
    lines = (result.stderr or "").splitlines()
    text = "\n".join(line for line in lines if not PROGRESS_BAR.search(line))
    return f"rc {result.returncode}: {text[-chars:]}"
