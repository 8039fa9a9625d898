"""Small-scale test of PixArt-delta's central claim (§3, Table 2, Fig. 7: the LCM student at 4 steps is close to its
teacher at 14-20 DPM-Solver++ steps with CFG, and far better than the teacher at 4 steps), measured on both sides on
the same prompts (``diffusion/experiments/lcm_quality.py``).

Rows: teacher DPM-Solver++ at 4, 14 and 20 steps with CFG 4.5; LCM at 1, 2, 4 and 8 steps (no CFG).
Columns: FID and SWD against the embedded dataset, prompt-attribute accuracy, seconds per image and model evaluations
per image. FID uses the features of a small attribute classifier trained on the embedded data (InceptionV3 cannot be
downloaded here), so its values are comparable between rows, not with published FIDs; those features do not see
texture. SWD (``diffusion/eval/swd.py``: the multi-scale sliced Wasserstein distance on Laplacian-pyramid patches of
the pixels, x 1e3, seeded) sees noise, blur and texture: its mean over pyramid levels in the table, each level in
``results.json``. The caption gives both metrics for real against real images (the floor at that sample size).
Writes ``table.md``, ``results.json`` and ``grid.png`` under ``--out``.

    python tools/reproduce_lcm.py --teacher assets/tiny_teacher/model.safetensors \
        --student output/demo/lcm/checkpoints/step_0000300/model.safetensors --num-images 480
"""

import argparse

from mmengine.config import Config

from diffusion.experiments.lcm_quality import reproduce
from diffusion.paths import repo_path, shown

DEFAULT_CONFIG = repo_path("configs/lcm/tiny_lcm.py")
DEFAULT_TEACHER = repo_path("assets/tiny_teacher/model.safetensors")


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--config",
        default=DEFAULT_CONFIG,
        help=f"gives model, text encoder, codec, data (default {shown(DEFAULT_CONFIG)})",
    )
    parser.add_argument("--teacher", default=DEFAULT_TEACHER, help=f"default {shown(DEFAULT_TEACHER)}")
    parser.add_argument("--student", required=True, help="distilled LCM weights (LoRA checkpoints are merged)")
    parser.add_argument(
        "--student-cfg-scale", type=float, default=None, help="w-embedding student: cfg = w + 1 (default method.w + 1)"
    )
    parser.add_argument("--num-images", type=int, default=480, help="images per row (and real images for FID)")
    parser.add_argument("--batch-size", type=int, default=120)
    parser.add_argument("--features", default="embedded", help="embedded | inception (standard FID)")
    parser.add_argument("--weights", default=None, help="feature network weights (default: embedded, trained here)")
    parser.add_argument("--out", default="output/reproduce_lcm")
    args = parser.parse_args(argv)
    return reproduce(
        Config.fromfile(str(args.config)),
        args.teacher,
        args.student,
        args.out,
        num_images=args.num_images,
        batch_size=args.batch_size,
        features=args.features,
        weights=args.weights,
        student_cfg_scale=args.student_cfg_scale,
    )


if __name__ == "__main__":
    main()
