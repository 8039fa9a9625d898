"""Small-scale test of PixArt-delta's central claim (§3, Table 2, Fig. 7: the LCM student at 4 steps is close to its
teacher at 14-20 DPM-Solver++ steps with CFG, and far better than the teacher at 4 steps). This tool measures both
sides on the same prompts and reports the numbers; whether the claim holds is read from the table. At this scale the
README finds the first half (LCM 4 steps close to the teacher at 14-20), not the second.

Rows: teacher DPM-Solver++ at 4, 14 and 20 steps with CFG 4.5; LCM at 1, 2, 4 and 8 steps (no CFG).
Columns: FID against the embedded dataset, prompt-attribute accuracy, seconds per image and model evaluations per
image. FID uses the features of a small attribute classifier trained on the embedded data (InceptionV3 cannot be
downloaded here), so its values are comparable between rows, not with published FIDs.

    python tools/reproduce_lcm.py --teacher assets/tiny_teacher/model.safetensors \
        --student output/demo/lcm/checkpoints/step_0000300/model.safetensors --num-images 480
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from mmengine.config import Config  # noqa: E402

from diffusion.build import load_pipeline  # noqa: E402
from diffusion.data.embedded import all_attribute_combinations, caption  # noqa: E402
from diffusion.engine.validation import save_grid  # noqa: E402
from diffusion.eval import (  # noqa: E402
    attribute_accuracy,
    build_feature_extractor,
    compute_statistics,
    extract_features,
    frechet_distance,
    statistics_of,
)
from diffusion.pipeline import Pipeline  # noqa: E402

ROWS = [  # (label, model, sampler settings)
    ("teacher DPM-Solver++, 4 steps, CFG 4.5", "teacher", dict(name="dpm", steps=4, cfg_scale=4.5)),
    ("teacher DPM-Solver++, 14 steps, CFG 4.5", "teacher", dict(name="dpm", steps=14, cfg_scale=4.5)),
    ("teacher DPM-Solver++, 20 steps, CFG 4.5", "teacher", dict(name="dpm", steps=20, cfg_scale=4.5)),
    ("PixArt-delta LCM, 1 step", "student", dict(name="lcm", steps=1)),
    ("PixArt-delta LCM, 2 steps", "student", dict(name="lcm", steps=2)),
    ("PixArt-delta LCM, 4 steps", "student", dict(name="lcm", steps=4)),
    ("PixArt-delta LCM, 8 steps", "student", dict(name="lcm", steps=8)),
]
GRID_PROMPTS = 8


def eval_prompts(num: int, seed: int = 0) -> list[str]:
    """``num`` captions drawn without replacement (cycling) from every attribute combination, in a seeded order."""
    combos = all_attribute_combinations()
    order = np.random.default_rng(seed).permutation(len(combos))
    return [caption(combos[order[i % len(combos)]]) for i in range(num)]


def generate(pipe: Pipeline, prompts: list[str], sampler: dict, batch_size: int) -> tuple[torch.Tensor, float, int]:
    """(uint8 images (N,3,H,W), seconds per image, model evaluations per image); batch b uses seed b."""
    images, start, nfe = [], time.perf_counter(), 0
    for b, i in enumerate(range(0, len(prompts), batch_size)):
        images.append(pipe(prompts[i : i + batch_size], seed=b, **sampler))
        nfe = pipe.nfe
    return torch.cat(images), (time.perf_counter() - start) / len(prompts), nfe


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="configs/lcm/tiny_lcm.py", help="gives model, text encoder, codec, data")
    parser.add_argument("--teacher", default="assets/tiny_teacher/model.safetensors")
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
    cfg, out = Config.fromfile(args.config), Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)

    extractor = build_feature_extractor(args.features, args.weights)
    classifier = extractor.net if hasattr(extractor, "net") else None
    ref_mu, ref_sigma, _ = statistics_of(cfg.data.root, extractor, num=args.num_images, progress=False)
    teacher = load_pipeline(cfg, args.teacher)
    pipes = {"teacher": teacher, "student": load_pipeline(cfg, args.student, like=teacher)}
    student_cfg = args.student_cfg_scale  # a w-embedding student: the method's w unless given (cfg = w + 1)
    if student_cfg is None and getattr(pipes["student"].model, "w_embedder", None) is not None:
        student_cfg = cfg.method.get("w", 4.5) + 1.0

    prompts = eval_prompts(args.num_images)
    results, grid_rows = [], []
    for label, which, sampler in ROWS:
        if which == "student" and student_cfg is not None:
            sampler, label = dict(sampler, cfg_scale=student_cfg), f"{label}, embedded w {student_cfg - 1:g}"
        images, sec, nfe = generate(pipes[which], prompts, sampler, args.batch_size)
        mu, sigma = compute_statistics(extract_features(extractor, images.split(args.batch_size), progress=False))
        row = dict(setting=label, fid=frechet_distance(mu, sigma, ref_mu, ref_sigma), sec_per_image=sec, nfe=nfe)
        if classifier is not None:
            acc = attribute_accuracy(classifier, images, prompts)
            row.update(attr_all=acc["all"], attr_mean=float(np.mean([v for k, v in acc.items() if k != "all"])))
        results.append(row)
        grid_rows.append(images[:GRID_PROMPTS])
        print(json.dumps(row), flush=True)

    save_grid(torch.cat(grid_rows), out / "grid.png", columns=GRID_PROMPTS)
    (out / "results.json").write_text(json.dumps(results, indent=2))
    table = format_table(results, args)
    (out / "table.md").write_text(table)
    print(table)
    return {"results": results, "table": table}


def format_table(results: list[dict], args: argparse.Namespace) -> str:
    lines = [
        f"FID ({args.features} features) against {args.num_images} embedded-dataset images; {args.num_images} "
        "generated images per row; prompt-attribute accuracy by the embedded attribute classifier "
        "(all five attributes right / mean over attributes).",
        "",
        "| setting | FID ↓ | attributes all-correct ↑ | attribute mean ↑ | s / image | model evals / image |",
        "|---|---|---|---|---|---|",
    ]
    for r in results:
        lines.append(
            f"| {r['setting']} | {r['fid']:.2f} | {r.get('attr_all', float('nan')):.3f} | "
            f"{r.get('attr_mean', float('nan')):.3f} | {r['sec_per_image'] * 1e3:.1f} ms | {r['nfe']} |"
        )
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
