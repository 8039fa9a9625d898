"""Small-scale test of PixArt-delta's central claim (§3, Table 2, Fig. 7: the LCM student at 4 steps is close to its
teacher at 14-20 DPM-Solver++ steps with CFG, and far better than the teacher at 4 steps). :func:`reproduce`
measures both sides on the same prompts and reports the numbers; whether the claim holds is read from the table. At
this scale the README finds the first half (LCM 4 steps close to the teacher at 14-20), not the second.

Rows: teacher DPM-Solver++ at 4, 14 and 20 steps with CFG 4.5; LCM at 1, 2, 4 and 8 steps (no CFG).
Columns: FID and SWD against the embedded dataset, prompt-attribute accuracy, seconds per image and model evaluations
per image. FID uses the features of a small attribute classifier trained on the embedded data (InceptionV3 cannot be
downloaded here), so its values are comparable between rows, not with published FIDs. That network does not see
texture (blotchy, noisy 4-step teacher samples got the best FID); SWD (:mod:`diffusion.eval.swd`, the multi-scale
sliced Wasserstein distance on Laplacian-pyramid patches of the pixels) does: per pyramid level in ``results.json``,
their mean in the table, with both metrics' floor (two disjoint sets of real images) in the caption. The command is
``tools/reproduce_lcm.py``; ``make demo`` runs it on its student; ``eval_prompts`` and ``generate`` serve the guidance
sweep too (:mod:`diffusion.experiments.lcm_sweep`).
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import torch
from mmengine.config import Config

from diffusion.build import load_pipeline
from diffusion.data.embedded import all_attribute_combinations, caption
from diffusion.engine.validation import save_grid
from diffusion.eval import (
    attribute_accuracy,
    build_feature_extractor,
    compute_statistics,
    extract_features,
    frechet_distance,
    statistics_of,
)
from diffusion.eval.images import iter_image_batches, list_images
from diffusion.eval.swd import DIRECTIONS, PATCH, PATCHES_PER_IMAGE, REPEATS, swd
from diffusion.pipeline import Pipeline

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


def reference_images(root: str | Path, num: int, size: int, start: int = 0) -> torch.Tensor:
    """uint8 (n <= num, 3, size, size): images ``start`` to ``start + num`` of the dataset root or folder ``root``, in
    the order FID reads them (:func:`~diffusion.eval.images.list_images`), resized (bilinear) to ``size`` where they
    differ; fewer where the folder ends (unreadable files are skipped)."""
    paths = list_images(root)[start : start + num]
    batches = list(iter_image_batches(paths, batch_size=max(1, len(paths)), size=size))
    return torch.cat(batches) if batches else torch.empty(0, 3, size, size, dtype=torch.uint8)


def real_floor(root: str | Path, reference: torch.Tensor, ref_stats: tuple, extractor, batch_size: int) -> dict | None:
    """FID and SWD of the next ``len(reference)`` images of ``root`` against ``reference`` (its first images,
    statistics ``ref_stats`` = (mu, sigma)): what real images score at this sample size, the floor a row is read
    against. None when ``root`` has fewer than twice as many images."""
    num, size = len(reference), reference.shape[-1]
    others = reference_images(root, num, size, start=num)
    if len(others) < num:
        return None
    mu, sigma = compute_statistics(extract_features(extractor, others.split(batch_size), progress=False))
    return dict(num=num, fid=frechet_distance(mu, sigma, *ref_stats), swd=swd(reference, others))


def reproduce(
    cfg: Config,
    teacher: str | Path,
    student: str | Path,
    out: str | Path,
    num_images: int = 480,
    batch_size: int = 120,
    features: str = "embedded",
    weights: str | None = None,
    student_cfg_scale: float | None = None,
) -> dict:
    """Every row of :data:`ROWS` on ``num_images`` prompts: ``{"results": [row dict], "floor": dict | None, "table":
    markdown}``; writes ``grid.png``, ``results.json`` (the rows) and ``table.md`` under ``out`` and prints the table.

    ``cfg`` gives model, text encoder, codec and data (FID and SWD are against the first ``num_images`` images of
    ``cfg.data.root``; ``floor``: :func:`real_floor`); ``features``: ``"embedded"`` (the attribute classifier's,
    trained here; its weights ``weights``) or ``"inception"`` (standard FID); ``student_cfg_scale``: a w-embedding
    student's cfg = w + 1 (default the config's ``method.w`` + 1). A row's ``swd`` is
    :func:`~diffusion.eval.swd.swd` of its images against those real ones (x 1e3 per pyramid level and ``avg``, at the
    metric's fixed seed: every row sees the same patch positions and directions)."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)

    extractor = build_feature_extractor(features, weights)
    classifier = extractor.net if hasattr(extractor, "net") else None
    ref_mu, ref_sigma, _ = statistics_of(cfg.data.root, extractor, num=num_images, progress=False)
    teacher_pipe = load_pipeline(cfg, teacher)
    pipes = {"teacher": teacher_pipe, "student": load_pipeline(cfg, student, like=teacher_pipe)}
    student_cfg = student_cfg_scale  # a w-embedding student: the method's w unless given (cfg = w + 1)
    if student_cfg is None and getattr(pipes["student"].model, "w_embedder", None) is not None:
        student_cfg = cfg.method.get("w", 4.5) + 1.0
    reference = reference_images(cfg.data.root, num_images, teacher_pipe.resolution[0])
    floor = real_floor(cfg.data.root, reference, (ref_mu, ref_sigma), extractor, batch_size)

    prompts = eval_prompts(num_images)
    results, grid_rows = [], []
    for label, which, sampler in ROWS:
        if which == "student" and student_cfg is not None:
            sampler, label = dict(sampler, cfg_scale=student_cfg), f"{label}, embedded w {student_cfg - 1:g}"
        images, sec, nfe = generate(pipes[which], prompts, sampler, batch_size)
        mu, sigma = compute_statistics(extract_features(extractor, images.split(batch_size), progress=False))
        row = dict(setting=label, fid=frechet_distance(mu, sigma, ref_mu, ref_sigma), swd=swd(reference, images))
        row.update(sec_per_image=sec, nfe=nfe)
        if classifier is not None:
            acc = attribute_accuracy(classifier, images, prompts)
            row.update(attr_all=acc["all"], attr_mean=float(np.mean([v for k, v in acc.items() if k != "all"])))
        results.append(row)
        grid_rows.append(images[:GRID_PROMPTS])
        print(json.dumps(row), flush=True)

    save_grid(torch.cat(grid_rows), out / "grid.png", columns=GRID_PROMPTS)
    (out / "results.json").write_text(json.dumps(results, indent=2))
    table = format_table(results, features, num_images, floor)
    (out / "table.md").write_text(table)
    print(table)
    return {"results": results, "floor": floor, "table": table}


def swd_caption(results: list[dict], num_images: int) -> str:
    """What the SWD column is (the levels read off the rows' ``swd`` keys), for a table's caption."""
    levels = next((list(r["swd"])[:-1] for r in results if "swd" in r), [])
    return (
        f"SWD ×1e3: sliced Wasserstein distance between {PATCH}×{PATCH}-pixel patches of the Laplacian pyramid "
        f"(levels {', '.join(levels)} px; {PATCHES_PER_IMAGE} patches per image, {REPEATS} × {DIRECTIONS} random "
        f"directions, fixed seed) of each row's images and the same {num_images} real images, the mean over levels "
        "(each level in results.json); it sees noise, "
        "blur and texture that the FID features miss."
    )


def floor_caption(floor: dict | None) -> str:
    """The real-vs-real line of a caption (empty without a floor)."""
    if floor is None:
        return ""
    return (
        f" Real against real ({floor['num']} other embedded-dataset images, the floor at this sample size): FID "
        f"{floor['fid']:.2f}, SWD {floor['swd']['avg']:.2f}."
    )


def swd_cell(row: dict) -> str:
    return f"{row['swd']['avg']:.2f}" if "swd" in row else "–"


def format_table(results: list[dict], features: str, num_images: int, floor: dict | None = None) -> str:
    lines = [
        f"FID ({features} features) against {num_images} embedded-dataset images; {num_images} "
        "generated images per row; prompt-attribute accuracy by the embedded attribute classifier "
        f"(all five attributes right / mean over attributes). {swd_caption(results, num_images)}"
        f"{floor_caption(floor)}",
        "",
        "| setting | FID ↓ | SWD ×1e3 ↓ | attributes all-correct ↑ | attribute mean ↑ | s / image "
        "| model evals / image |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in results:
        lines.append(
            f"| {r['setting']} | {r['fid']:.2f} | {swd_cell(r)} | {r.get('attr_all', float('nan')):.3f} | "
            f"{r.get('attr_mean', float('nan')):.3f} | {r['sec_per_image'] * 1e3:.1f} ms | {r['nfe']} |"
        )
    return "\n".join(lines) + "\n"
