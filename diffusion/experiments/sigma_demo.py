"""``make sigma-demo`` (``tools/sigma_demo.py``): the embedded default as PixArt-Sigma (issue 18 item 5), with and
without KV compression, so that what compression costs is measured on the same footing.

Per variant (:data:`VARIANTS`: ``kv``, the configs as they are, keys and values of blocks 3-5 compressed 2x per axis;
``none``, the same with ``model.kv_compress_config=None``):

1. fine-tune the committed tiny PixArt-alpha teacher (``assets/tiny_teacher``) into a Sigma-style one
   (``configs/pixart/tiny_sigma_teacher.py``), published in fp16 to ``<out>/<variant>/teacher`` with ``meta.json``
   (:func:`diffusion.experiments.assets.train_and_publish`, as the committed teacher);
2. distil it with PixArt-delta's LCM method (``configs/lcm/tiny_sigma_lcm.py``, ``weights.teacher`` = that teacher) in
   ``<out>/<variant>/lcm``, as ``make demo`` distils the alpha teacher;
3. ``make demo``'s comparison grid (``<variant>/teacher_vs_lcm.png``) and reproduction table
   (``<variant>/reproduce_lcm/``, :func:`diffusion.experiments.lcm_quality.reproduce`: FID, SWD, attributes; each
   variant's table names the real-vs-real floor).

Then one table with both variants side by side (``<out>/table.md``), the sampling time of the two networks measured
interleaved (``<out>/speed.json``; the table's own ms/image are from runs minutes apart on whatever else the CPU does)
and a grid of both teachers (DPM-Solver++ 20, CFG 4.5) and both students (LCM 4 steps) (``<out>/kv_vs_none.png``).
"""

from __future__ import annotations

import json
import statistics
import time
from pathlib import Path

import torch
from mmengine.config import Config

from diffusion.build import load_pipeline, weight_sources
from diffusion.data import VALIDATION_PROMPTS, ensure_embedded_default
from diffusion.engine import Trainer, dist, find_latest, require_finished
from diffusion.engine.checkpoint import claim_run_dir
from diffusion.engine.validation import save_grid
from diffusion.experiments.assets import file_hash, lcm_run_digest, make_teacher, train_and_publish
from diffusion.experiments.demo import comparison_grid
from diffusion.experiments.lcm_quality import eval_prompts, floor_caption, generate, reproduce, swd_caption, swd_cell
from diffusion.paths import repo_path, shown

ALPHA_TEACHER = repo_path("assets/tiny_teacher/model.safetensors")
TEACHER_CONFIG = repo_path("configs/pixart/tiny_sigma_teacher.py")
LCM_CONFIG = repo_path("configs/lcm/tiny_sigma_lcm.py")
VARIANTS = {  # name -> config overrides of both configs
    "none": {"model.kv_compress_config": None},
    "kv": {},
}
LABELS = {"none": "no", "kv": "blocks 3-5, 2x2"}  # the table's "KV compression" column
SPEED = [  # (label, which network, sampler): what the interleaved timing runs
    ("teacher DPM-Solver++ 20 steps, CFG 4.5", "teacher", dict(name="dpm", steps=20, cfg_scale=4.5)),
    ("LCM 4 steps", "student", dict(name="lcm", steps=4)),
]


def variant_configs(
    variant: str, out: Path, cfg_options: dict | None = None, alpha_teacher: str | Path | None = None
) -> tuple[Config, Config]:
    """(teacher fine-tune config, LCM config) of ``variant``: :data:`VARIANTS`' overrides, then ``cfg_options``
    (both configs); the fine-tune's ``weights.base`` = ``alpha_teacher`` (default: the config's), and the LCM's
    ``weights.teacher`` = the teacher that variant publishes (``<out>/<variant>/teacher``)."""
    if variant not in VARIANTS:
        raise ValueError(f"unknown variant {variant!r}; known: {list(VARIANTS)}")
    teacher_cfg, lcm_cfg = Config.fromfile(str(TEACHER_CONFIG)), Config.fromfile(str(LCM_CONFIG))
    for cfg in (teacher_cfg, lcm_cfg):
        cfg.merge_from_dict({**VARIANTS[variant], **(cfg_options or {})})
    if alpha_teacher is not None:
        teacher_cfg.merge_from_dict({"weights.base": str(alpha_teacher)})
    lcm_cfg.merge_from_dict({"weights.teacher": str(out / variant / "teacher" / "model.safetensors")})
    return teacher_cfg, lcm_cfg


def fine_tune_teacher(cfg: Config, work_dir: Path, out_dir: Path, variant: str) -> Path:
    """Fine-tune ``weights.base`` (the alpha teacher) with ``cfg`` and publish it to ``out_dir`` (fp16 +
    ``meta.json``); an interrupted run of the same config and weights resumes, a run of others is moved aside, and a
    teacher already published from the same config and weights is reused as it is (its meta keeps the run's time)."""
    digest = lcm_run_digest(cfg)  # the config and the file it starts from
    published = out_dir / "model.safetensors"
    if published.is_file() and (out_dir / "meta.json").is_file():
        if json.loads((out_dir / "meta.json").read_text()).get("run_sha256") == digest:
            print(f"[sigma-demo] {variant}: {published} is already fine-tuned from these inputs")
            return published
    inputs = lambda: dict(  # noqa: E731 (what meta.json records beside the run's measurements)
        variant=variant,
        cfg_options=dict(VARIANTS[variant]),
        kv_compress_config=cfg.model.get("kv_compress_config"),
        fine_tuned_from=str(weight_sources(cfg).base),
        fine_tuned_from_sha256=file_hash(weight_sources(cfg).base),
        run_sha256=digest,
    )
    return train_and_publish(cfg, TEACHER_CONFIG, work_dir, out_dir, digest, inputs, on_other="move")


def distil(cfg: Config, work_dir: Path) -> Path:
    """PixArt-delta LCM distillation of ``weights.teacher`` in ``work_dir`` (resumed when interrupted; a run of another
    config or teacher is moved aside); returns the final student checkpoint's ``model.safetensors``."""
    note = dist.portable_precision(cfg)
    if note:
        print(f"[sigma-demo] {note}")
    work_dir = claim_run_dir(work_dir, lcm_run_digest(cfg), on_other="move")
    finished = Trainer(cfg, work_dir, resume="auto").train()
    dist.cleanup()
    require_finished(finished, "run make sigma-demo again to resume it")
    return find_latest(work_dir) / "model.safetensors"


def interleaved_speed(pipes: dict[str, dict], num_images: int, repeats: int) -> dict:
    """Median ms per image of every :data:`SPEED` sampler for each variant's networks, the variants taking turns
    (``repeats`` rounds of ``num_images`` prompts in one batch), so a change in the CPU's load hits both alike."""
    prompts = eval_prompts(num_images)
    times: dict[str, dict[str, list[float]]] = {v: {label: [] for label, _, _ in SPEED} for v in pipes}
    for _ in range(repeats):
        for variant, pipe in pipes.items():
            for label, which, sampler in SPEED:
                times[variant][label].append(generate(pipe[which], prompts, sampler, num_images)[1] * 1e3)
    return {v: {label: statistics.median(ms) for label, ms in by.items()} for v, by in times.items()}


def side_by_side_grid(pipes: dict[str, dict], out: Path) -> Path:
    """Rows: validation prompts; columns per variant: teacher DPM-Solver++ 20 with CFG 4.5, then LCM 4 steps."""
    columns, labels = [], []
    for variant, pipe in pipes.items():
        for label, which, sampler in SPEED:
            columns.append(pipe[which](VALIDATION_PROMPTS, seed=0, **sampler))
            labels.append(f"KV compression {LABELS[variant]}: {label}")
    path = save_grid(torch.stack(columns, dim=1).flatten(0, 1), out, columns=len(columns))
    out.with_suffix(".txt").write_text("columns: " + " | ".join(labels) + "\nrows:\n" + "\n".join(VALIDATION_PROMPTS))
    return path


def combined_table(
    results: dict[str, list[dict]], teachers: dict[str, dict], speed: dict, num_images: int, floor: dict | None = None
) -> str:
    """Markdown: every reproduction row with each variant next to the other, then the interleaved speed; ``floor``:
    the real-vs-real FID and SWD (:func:`~diffusion.experiments.lcm_quality.real_floor`; one data set, both
    variants)."""
    lines = [
        f"FID (embedded features) against {num_images} embedded-dataset images, {num_images} generated images per "
        "row; prompt attributes by the embedded attribute classifier (all five right / mean). "
        f"{swd_caption(next(iter(results.values()), []), num_images)}{floor_caption(floor)} KV compression: keys "
        "and values of self-attention in the listed blocks on a 2x2-pooled token grid (8x8 -> 4x4).",
        "",
        "| setting | KV compression | FID ↓ | SWD ×1e3 ↓ | attributes all-correct ↑ | attribute mean ↑ | s / image "
        "| model evals / image |",
        "|---|---|---|---|---|---|---|---|",
    ]
    variants = list(results)
    for i, row in enumerate(results[variants[0]]):
        for v in variants:
            r = results[v][i]
            lines.append(
                f"| {row['setting']} | {LABELS[v]} | {r['fid']:.2f} | {swd_cell(r)} | "
                f"{r.get('attr_all', float('nan')):.3f} | "
                f"{r.get('attr_mean', float('nan')):.3f} | {r['sec_per_image'] * 1e3:.1f} ms | {r['nfe']} |"
            )
    lines += ["", "| teacher fine-tune | KV compression | steps x batch | final loss | wall time |"]
    lines += ["|---|---|---|---|---|"]
    for v, meta in teachers.items():
        lines.append(
            f"| {shown(TEACHER_CONFIG)} | {LABELS[v]} | {meta['steps']} x {meta['batch_size']} | "
            f"{meta['final_loss']:.4f} | {meta['wall_time_s'] / 60:.1f} min |"
        )
    if speed:
        header = " | ".join(f"KV {LABELS[v]}" for v in speed)
        lines += ["", f"| sampling, ms / image (interleaved, median) | {header} |", "|---" * (len(speed) + 1) + "|"]
        for label, _, _ in SPEED:
            lines.append(f"| {label} | " + " | ".join(f"{speed[v][label]:.1f}" for v in speed) + " |")
    return "\n".join(lines) + "\n"


def run(
    out: str | Path = "output/sigma_demo",
    variants: tuple[str, ...] = tuple(VARIANTS),
    eval_images: int = 240,
    speed_images: int = 48,
    speed_repeats: int = 3,
    cfg_options: dict | None = None,
    teacher_steps: int | None = None,
    lcm_steps: int | None = None,
    alpha_teacher: str | Path = ALPHA_TEACHER,
    weights: str | Path | None = None,
) -> dict:
    """The whole Sigma demo into ``out`` (module docstring); ``cfg_options`` override both configs of every variant,
    ``teacher_steps`` / ``lcm_steps`` the fine-tune's / the distillation's ``train.max_steps``, ``alpha_teacher`` is
    the checkpoint fine-tuned (trained by ``make teacher`` when it is the committed one and missing), ``weights`` the
    attribute net of the tables (default: trained here once).
    Returns ``{"results": {variant: rows}, "speed": ..., "table": markdown}``."""
    out, start = Path(out), time.time()
    first, _ = variant_configs(variants[0], out, cfg_options, alpha_teacher)
    ensure_embedded_default(root=first.data.root, text_encoder_path=first.text_encoder.path, progress=True)
    if not Path(alpha_teacher).is_file():
        if Path(alpha_teacher).resolve() != ALPHA_TEACHER:
            raise FileNotFoundError(f"alpha teacher {alpha_teacher} does not exist")
        print(f"[sigma-demo] {shown(ALPHA_TEACHER)} missing: training the tiny teacher (make teacher)")
        make_teacher()
    results, teachers, pipes, floor = {}, {}, {}, None
    for variant in variants:
        teacher_cfg, lcm_cfg = variant_configs(variant, out, cfg_options, alpha_teacher)
        for cfg, steps in ((teacher_cfg, teacher_steps), (lcm_cfg, lcm_steps)):
            if steps:
                cfg.merge_from_dict({"train.max_steps": steps})
        print(f"[sigma-demo] {variant}: fine-tuning the alpha teacher ({time.time() - start:.0f} s)")
        teacher = fine_tune_teacher(teacher_cfg, out / variant / "teacher_run", out / variant / "teacher", variant)
        teachers[variant] = json.loads((teacher.parent / "meta.json").read_text())
        print(f"[sigma-demo] {variant}: LCM distillation of {teacher} ({time.time() - start:.0f} s)")
        student = distil(lcm_cfg, out / variant / "lcm")
        grid = comparison_grid(lcm_cfg, teacher, student, out / variant / "teacher_vs_lcm.png")
        print(f"[sigma-demo] {variant}: comparison grid {grid} ({time.time() - start:.0f} s)")
        table = reproduce(lcm_cfg, teacher, student, out / variant / "reproduce_lcm", eval_images, weights=weights)
        results[variant], floor = table["results"], table["floor"]  # the floor: the same data for every variant
        pipes[variant] = {"teacher": load_pipeline(lcm_cfg, teacher)}
        pipes[variant]["student"] = load_pipeline(lcm_cfg, student, like=pipes[variant]["teacher"])
    grid = side_by_side_grid(pipes, out / "kv_vs_none.png")
    speed = interleaved_speed(pipes, speed_images, speed_repeats) if speed_repeats > 0 else {}
    (out / "speed.json").write_text(json.dumps(speed, indent=2))
    table = combined_table(results, teachers, speed, eval_images, floor)
    (out / "table.md").write_text(table)
    print(table)
    print(f"[sigma-demo] grids: {grid} and {out}/<variant>/teacher_vs_lcm.png")
    print(f"[sigma-demo] finished in {(time.time() - start) / 60:.1f} min; see {out}/")
    return {"results": results, "speed": speed, "table": table}
