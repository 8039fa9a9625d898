"""The faults the drill (tools/fault_drill.py) injects from inside a training process, and its probes of a run dir.

    python tools/fault_inject.py SPEC_JSON CONFIG [train.py arguments]     # also as torchrun's script

``SPEC_JSON`` keys: ``kill_at_step`` (send ``signal``, default SIGKILL, as that optimizer step starts; with ``rank``
on that rank only; on the first torchrun attempt only), ``kill_in_save`` (SIGKILL after the first file of that step's
checkpoint is written), ``nan_steps`` (step attempts of this process, from 1, made NaN),
``sleep`` (seconds per step, so that
an outside signal or limit lands mid-run) and ``ignore_sigxfsz`` (a file-size limit then fails the write with EFBIG
instead of killing the process).
"""

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
PROGRESS_BAR = re.compile(r"\d+(\.\d+)?(it/s|s/it)\]")  # a tqdm line


def run_child(spec: dict, argv: list[str]) -> None:
    """Install the faults of ``spec`` into the trainer, then run ``train_scripts/train.py`` with ``argv``."""
    from diffusion.engine import checkpoint as ckpt
    from diffusion.engine.trainer import Trainer
    from train_scripts.train import main

    first_attempt = os.environ.get("TORCHELASTIC_RESTART_COUNT", "0") == "0"
    on_this_rank = spec.get("rank") is None or int(os.environ.get("RANK", 0)) == spec["rank"]
    if spec.get("ignore_sigxfsz"):
        # a file-size limit then fails the write with EFBIG instead of killing the process
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    train_step, init, save_tensors = Trainer.train_step, Trainer.__init__, ckpt.save_tensors

    def step_with_faults(self, batches):
        self.drill_attempts = getattr(self, "drill_attempts", 0) + 1  # optimizer-step attempts, skipped ones included
        if spec.get("kill_at_step") == self.step + 1 and on_this_rank and first_attempt:
            os.kill(os.getpid(), signal.Signals[spec.get("signal", "SIGKILL")])
        time.sleep(spec.get("sleep", 0.0))
        return train_step(self, batches)

    def init_with_nans(self, *args, **kwargs):
        init(self, *args, **kwargs)
        forward = self.method.forward

        def nan_forward(model, batch):
            loss, logs = forward(model, batch)
            # a skipped step does not advance self.step, so NaNs are keyed on the attempt, not on the step number
            nan = getattr(self, "drill_attempts", 0) in spec.get("nan_steps", ())
            return (loss * float("nan") if nan else loss), logs

        self.method.forward = nan_forward

    def save_then_die(path, tensors):
        save_tensors(path, tensors)
        if f"step_{spec.get('kill_in_save', -1):07d}.tmp" in str(path):
            os.kill(os.getpid(), signal.SIGKILL)  # one file of the checkpoint written, the rest not

    Trainer.train_step, Trainer.__init__, ckpt.save_tensors = step_with_faults, init_with_nans, save_then_die
    main(argv)


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


if __name__ == "__main__":
    run_child(json.loads(sys.argv[1]), sys.argv[2:])
