"""Train the embedded default's teacher from scratch and publish it as ``assets/tiny_teacher/`` (``make teacher``).

The tiny teacher stands in for the released PixArt-alpha checkpoint: ``make demo`` starts from it as a real user
starts from PixArt-XL-2-1024-MS. The published file is the final checkpoint's trained weights (the end of a cosine
schedule; the run's EMA stays in its checkpoints), stored in fp16 to stay small, with ``meta.json`` recording the
config hash (a test checks it against ``configs/pixart/tiny_teacher.py``), the text-encoder hash, the wall time and
the measured throughput (``diffusion/experiments/assets.py``).

    python tools/make_teacher.py [--config configs/pixart/tiny_teacher.py] [--work-dir output/tiny_teacher_run]
"""

import argparse

from diffusion.experiments.assets import TEACHER_CONFIG, TEACHER_DIR, make_teacher
from diffusion.paths import shown


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default=TEACHER_CONFIG, help=f"default {shown(TEACHER_CONFIG)}")
    parser.add_argument("--work-dir", default="output/tiny_teacher_run")
    parser.add_argument("--out", default=TEACHER_DIR, help=f"default {shown(TEACHER_DIR)}")
    args = parser.parse_args(argv)
    make_teacher(args.config, args.work_dir, args.out)


if __name__ == "__main__":
    main()
