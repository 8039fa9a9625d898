"""PixArt-delta Fig. 2 at small scale: how the guidance of LCM distillation shapes the 4-step student over training,
next to the teacher at 4 / 14 / 20 DPM-Solver++ steps across CFG scales (``diffusion/experiments/lcm_sweep.py``).

Part 1 distils the tiny teacher (``configs/lcm/tiny_lcm.py``) three times, as the paper's Fig. 2 compares:
fixed guidance w = 3.5, fixed w = 4.5 (PixArt-delta's choice) and the LCM default, a w-embedding with w ~ U[3, 15]
sampled at w = 4.5. Every ``--every`` steps the 4-step LCM student's embedded FID and prompt-attribute accuracy are
measured on ``--num-images`` images (step 0 is the teacher's own weights under the LCM sampler).

Part 2 samples the teacher at 4, 14 and 20 steps for each ``--cfg-scales`` value, so that a step-count effect is not
mistaken for a guidance effect. The two conventions: the teacher's CFG ``uncond + s (cond - uncond)`` and LCM's
``cond + w (cond - uncond)`` are the same guidance at s = w + 1, so the LCM w = 4.5 is CFG 5.5 here.

    python tools/sweep_lcm.py --steps 150 --every 50 --num-images 160   # output/sweep_lcm/{table.md,sweep.png}

FID is the embedded FID (features of the attribute classifier, see ``diffusion/eval/attribute_net.py``): comparable
between rows of this sweep only.
"""

import argparse

from diffusion.experiments.lcm_sweep import sweep
from diffusion.paths import repo_path, shown

DEFAULT_CONFIG = repo_path("configs/lcm/tiny_lcm.py")


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default=DEFAULT_CONFIG, help=f"default {shown(DEFAULT_CONFIG)}")
    parser.add_argument("--steps", type=int, default=150, help="distillation steps per variant")
    parser.add_argument("--every", type=int, default=50, help="evaluate the student every K steps")
    parser.add_argument("--train-batch-size", type=int, default=None, help="default: the config's train.batch_size")
    parser.add_argument("--num-images", type=int, default=160, help="generated images per point (and real for FID)")
    parser.add_argument("--cfg-scales", type=float, nargs="+", default=[1.0, 2.5, 4.5, 5.5, 7.5])
    parser.add_argument("--batch-size", type=int, default=80)
    parser.add_argument("--out", default="output/sweep_lcm")
    args = parser.parse_args(argv)
    return sweep(
        args.config,
        args.out,
        steps=args.steps,
        every=args.every,
        train_batch_size=args.train_batch_size,
        num_images=args.num_images,
        cfg_scales=args.cfg_scales,
        batch_size=args.batch_size,
    )


if __name__ == "__main__":
    main()
