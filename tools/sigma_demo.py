"""``make sigma-demo``: the embedded default as PixArt-Sigma, with and without KV compression
(``diffusion/experiments/sigma_demo.py``).

For each variant (``none``: no KV compression; ``kv``: keys and values of blocks 3-5 compressed 2x2, the configs as
they are), on the embedded data:

1. fine-tune the committed tiny PixArt-alpha teacher (``assets/tiny_teacher``) into a Sigma-style one
   (``configs/pixart/tiny_sigma_teacher.py``; the alpha checkpoint has no ``attn.sr``/``attn.norm`` weights: they start
   from their mean-pool init, with a warning in the run's train.log), published fp16 to ``OUT/<variant>/teacher``;
2. distil it with PixArt-delta's LCM method (``configs/lcm/tiny_sigma_lcm.py``) in ``OUT/<variant>/lcm``;
3. ``make demo``'s comparison grid and teacher-vs-LCM table (``OUT/<variant>/teacher_vs_lcm.png``,
   ``OUT/<variant>/reproduce_lcm/``).

Then ``OUT/table.md`` (both variants side by side, the fine-tunes, sampling time measured interleaved) and
``OUT/kv_vs_none.png`` (both teachers at DPM-Solver++ 20 with CFG 4.5 and both students at LCM 4 steps). An
interrupted run resumes where it stopped when started again.

    python tools/sigma_demo.py [--out output/sigma_demo] [--variants none kv] [--eval-images 240]
        [--speed-images 48] [--speed-repeats 3] [--teacher-steps N] [--lcm-steps N] [--cfg-options K=V ...]
"""

import argparse

from mmengine.config import DictAction

from diffusion.experiments.sigma_demo import VARIANTS, run


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="output/sigma_demo")
    parser.add_argument("--variants", nargs="+", choices=list(VARIANTS), default=list(VARIANTS))
    parser.add_argument("--eval-images", type=int, default=240, help="images per row of the reproduction tables")
    parser.add_argument("--speed-images", type=int, default=48, help="images per timed batch (0 repeats: no timing)")
    parser.add_argument("--speed-repeats", type=int, default=3, help="interleaved timing rounds (median reported)")
    parser.add_argument("--teacher-steps", type=int, default=None, help="override the fine-tune's train.max_steps")
    parser.add_argument("--lcm-steps", type=int, default=None, help="override the distillation's train.max_steps")
    parser.add_argument(
        "--cfg-options", nargs="+", action=DictAction, default={}, help="override keys of both configs: k=v"
    )
    args = parser.parse_args(argv)
    return run(
        args.out,
        tuple(args.variants),
        args.eval_images,
        args.speed_images,
        args.speed_repeats,
        args.cfg_options,
        args.teacher_steps,
        args.lcm_steps,
    )


if __name__ == "__main__":
    main()
