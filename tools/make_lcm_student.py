"""Distil the committed tiny teacher into the embedded default's 4-step LCM student, published as
``assets/tiny_lcm/`` (``make lcm-student``), so that ``make app`` starts on a fresh clone without training.

This is the PixArt-delta LCM distillation (§3, Algorithm 1) of ``make demo``, cut at 100 steps
(``configs/lcm/tiny_lcm_student.py``; same seed, constant learning rate), published the way ``make teacher``
publishes the teacher: the final checkpoint's student weights in fp16 plus ``meta.json`` recording the config hash
and the teacher's file hash (a test checks both against the repository), the wall time and the measured throughput.

    python tools/make_lcm_student.py [--config configs/lcm/tiny_lcm_student.py] [--work-dir output/tiny_lcm_run]
"""

import argparse

from diffusion.experiments.assets import LCM_CONFIG, LCM_DIR, make_lcm_student
from diffusion.paths import shown


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default=LCM_CONFIG, help=f"default {shown(LCM_CONFIG)}")
    parser.add_argument("--work-dir", default="output/tiny_lcm_run")
    parser.add_argument("--out", default=LCM_DIR, help=f"default {shown(LCM_DIR)}")
    args = parser.parse_args(argv)
    make_lcm_student(args.config, args.work_dir, args.out)


if __name__ == "__main__":
    main()
