"""Rebuild every table of the README on this machine: ``output/tables/<name>.md``, each stamped with the machine, the
commit and the exact command that produced it, plus ``output/tables/index.md`` listing what ran and what was skipped.

Tables (PixArt-δ: Table 2 / Fig. 7 quality, Fig. 2 guidance, Table 1 / §3.3 memory, §4 ControlNet, Table 2 speed):

- ``lcm``: ``tools/reproduce_lcm.py`` on a distilled student (``--student``, else ``assets/tiny_lcm`` or the latest
  ``make demo`` checkpoint; skipped with a line saying so when there is none).
- ``sweep``: ``tools/sweep_lcm.py`` (Fig. 2 at small scale); the slowest job, run only with ``--sweep``.
- ``controlnet``: ``tools/reproduce_controlnet.py --train``, which trains the ablation rows itself
  (``--controlnet-steps`` each, 150 by default: about an hour on 2 shared cores; finished rows in
  ``OUT/_cn_ablation/`` are reused) and
  evaluates them on ``--controlnet-images`` edge maps.
- ``speed``, ``memory``: ``tools/benchmark_speed.py``, ``tools/benchmark_memory.py`` with their defaults for this
  machine (each skipped with a clear line if absent).
- ``memory_simulated``, ``roofline``: ``tools/benchmark_memory.py --simulate`` and ``tools/benchmark_speed.py
  --roofline``, Table 1 and Table 2 at full size without a GPU (simulated peak memory, FLOP / bytes lower bound).

Contract with the tools: each prints its markdown table(s) on stdout (the ``|`` lines and the text between them are
kept); progress goes to stderr. A failing tool is reported in its table file and the index, and the others still run.
Whatever a sub-tool writes goes under ``--out`` (``OUT/_lcm``, ``OUT/_sweep``, ``OUT/_controlnet``, ...). The tools run
in the checkout (``diffusion/experiments/tables.py``).

    python tools/reproduce_tables.py                    # everything but the sweep
    python tools/reproduce_tables.py --only lcm speed --student output/demo/lcm/checkpoints/step_0000300
"""

import argparse
import shlex
import sys
from pathlib import Path

from diffusion.experiments.tables import Job, default_jobs, rebuild


def main(argv: list[str] | None = None, jobs: list[Job] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="output/tables")
    parser.add_argument("--only", nargs="+", default=None, help="names of the tables to rebuild")
    parser.add_argument("--student", default=None, help="LCM student weights for the lcm table")
    parser.add_argument("--num-images", type=int, default=240, help="images per row of the lcm table")
    parser.add_argument("--sweep", action="store_true", help="also run the Fig. 2 sweep (slow)")
    parser.add_argument(
        "--controlnet-steps", type=int, default=150, help="training steps of each ControlNet ablation row (batch 16)"
    )
    parser.add_argument("--controlnet-images", type=int, default=64, help="edge maps per row of the controlnet table")
    args = parser.parse_args(argv)
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    jobs = default_jobs(args, out) if jobs is None else jobs
    if args.only:
        unknown = set(args.only) - {j.name for j in jobs}
        if unknown:
            raise SystemExit(f"unknown table(s) {sorted(unknown)}; expected some of {[j.name for j in jobs]}")
        jobs = [j for j in jobs if j.name in args.only]
    run_by = shlex.join(["python", "tools/reproduce_tables.py", *(argv if argv is not None else sys.argv[1:])])
    return rebuild(jobs, out, run_by)


if __name__ == "__main__":
    raise SystemExit(main())
