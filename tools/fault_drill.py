"""Fault drill (issue 10): inject the faults a long PixArt-α/δ run meets (§3.3 runs are preempted, killed and resumed
many times) into real training runs of a tiny config and check that each one is survived.

    python tools/fault_drill.py [--out output/fault_drill] [--only sigkill_mid_run,disk_full ...]

The drill trains a shrunk PixArt_tiny (configs/pixart/tiny_teacher.py, one block) on a small embedded-shapes dataset
it builds itself (real T5 features and latents through the real FeatureDataset), first uninterrupted (the reference),
then once per fault. A fault is *survived* when the run either recovers by itself or stops with an error that names
the cause, and the drill then checks that *nothing finished is lost*: every completed checkpoint is still there and a
resumed run's per-step losses and final weights equal the reference bit for bit. The last line is
``faults injected: N, survived: N, data lost: 0``; the exit status is non-zero unless every fault was survived.

The shard scenarios (``shard_kill_mid_epoch``, ``shard_corrupt_member``, ``shard_missing``) train the same images
from WebDataset shards with on-the-fly encoding (configs/pixart/tiny_teacher_shards.py, shrunk alike, 2 loader
workers) against a shard reference run: a SIGKILL mid-epoch resumes exactly, a corrupt member and a missing shard are
skipped and named in train.log.

Faults are injected from inside the training process by the drill's training child (``python -m
diffusion.drill.inject``: a JSON spec, then the run ``train_scripts/train.py`` would start): SIGKILL at a step or in
the middle of a checkpoint write, a rank killed on the first torchrun attempt, NaN losses, a sleep per step (so an
outside SIGTERM lands mid-run). Disk full is a real tmpfs of a size between one and two checkpoints (we are root),
else a file-size limit set on the running process.

Every run's stdout and stderr go to ``out/logs/<run dir>.<n>.{out,err}``. A run that has not exited after
``RUN_TIMEOUT`` seconds is a hang: it is killed with every process it started (torchrun's workers too) and its
scenario fails with ``rc 124`` and the tail of its stderr, so the drill always ends with its last line.

The runner is ``diffusion/drill/runner.py``, the scenarios ``diffusion/drill/scenarios.py`` (a function each, named as
in ``--only``).
"""

import argparse
import sys
from pathlib import Path

from diffusion.drill.scenarios import SCENARIOS, run


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="output/fault_drill", help="scratch dir (deleted first)")
    parser.add_argument("--only", default=None, help=f"comma-separated subset of {','.join(SCENARIOS)}")
    parser.add_argument("--no-mount", action="store_true", help="disk full by RLIMIT_FSIZE, not a tmpfs")
    args = parser.parse_args(argv)
    only = args.only.split(",") if args.only else None
    if set(only or ()) - set(SCENARIOS):
        parser.error(f"unknown scenario(s) {sorted(set(only) - set(SCENARIOS))}; known: {list(SCENARIOS)}")
    injected, survived, lost = run(Path(args.out).resolve(), only, mount=not args.no_mount)
    sys.exit(0 if survived == injected and lost == 0 else 1)


if __name__ == "__main__":
    main()
