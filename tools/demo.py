"""``make demo``: the main job on the embedded default, end to end on a CPU (``diffusion/experiments/demo.py``).

1. make the embedded data (32x32 captioned shapes, tiny T5, feature caches) if missing;
2. load the committed tiny teacher (``assets/tiny_teacher``; trained by ``make teacher`` if absent);
3. PixArt-delta LCM distillation of that teacher with the shared trainer (``configs/lcm/tiny_lcm.py``);
4. a comparison grid (teacher DPM-Solver++ 20 and 4 steps with CFG 4.5 next to LCM 1, 2, 4 steps, no CFG) and the
   small-scale reproduction table (``tools/reproduce_lcm.py``);
5. controllable generation (§4): the committed tiny ControlNet-Transformer (``assets/tiny_controlnet``, trained on the
   teacher by ``make controlnet``) on the teacher (DPM-Solver++ 20, CFG 4.5) and, as it is, on the freshly distilled
   4-step LCM student (under the student's LCM settings), from edge maps of shapes drawn off the prompts' usual
   positions; all under ``output/demo/``;
6. every grid also enlarged 4x (nearest neighbour, ``*_x4.png``), and a closing summary (what was trained, the table,
   where the pictures are), printed and written to ``output/demo/summary.md``.

A rerun on the same machine with the same number of CPU threads gives the same student bit for bit.

    python tools/demo.py [--out output/demo] [--steps N] [--eval-images N]
"""

import argparse

from diffusion.experiments.demo import run


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="output/demo")
    parser.add_argument("--steps", type=int, default=None, help="override the LCM distillation steps")
    parser.add_argument("--eval-images", type=int, default=240, help="images per row of the reproduction table")
    args = parser.parse_args(argv)
    run(args.out, args.steps, args.eval_images)


if __name__ == "__main__":
    main()
