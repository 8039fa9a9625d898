"""``make demo`` (``tools/demo.py``): the main job on the embedded default, end to end on a CPU.

1. make the embedded data (32x32 captioned shapes, tiny T5, feature caches) if missing;
2. load the committed tiny teacher (``assets/tiny_teacher``; trained by ``make teacher`` if absent);
3. PixArt-delta LCM distillation of that teacher with the shared trainer (``configs/lcm/tiny_lcm.py``);
4. a comparison grid (teacher DPM-Solver++ 20 and 4 steps with CFG 4.5 next to LCM 1, 2, 4 steps, no CFG) and the
   small-scale reproduction table (:mod:`diffusion.experiments.lcm_quality`, ``tools/reproduce_lcm.py``);
5. controllable generation (§4): the committed tiny ControlNet-Transformer (``assets/tiny_controlnet``, trained on the
   teacher by ``make controlnet``) on the teacher (DPM-Solver++ 20, CFG 4.5) and, as it is, on the freshly distilled
   4-step LCM student, from edge maps of shapes drawn off the prompts' usual positions; all under ``output/demo/``.
"""

from __future__ import annotations

import time
from pathlib import Path

import torch
from mmengine.config import Config

from diffusion.build import load_pipeline, with_weights
from diffusion.data import VALIDATION_PROMPTS, ensure_embedded_default
from diffusion.data.embedded import prompt_edges
from diffusion.engine import Trainer, dist, find_latest, require_finished
from diffusion.engine.checkpoint import claim_run_dir
from diffusion.engine.validation import save_grid
from diffusion.experiments.assets import file_hash, make_teacher
from diffusion.experiments.lcm_quality import reproduce
from diffusion.paths import repo_path, shown
from diffusion.pipeline import Pipeline

TEACHER = repo_path("assets/tiny_teacher/model.safetensors")
LCM_CONFIG = repo_path("configs/lcm/tiny_lcm.py")
CONTROLNET = repo_path("assets/tiny_controlnet/model.safetensors")
CONTROLNET_CONFIG = repo_path("configs/controlnet/tiny_controlnet.py")
CONTROL_OFFSET = (3, -3)  # (row, col) px: the edges sit off the prompt's usual spot, so following them shows
COLUMNS = [  # (label, sampler settings)
    ("teacher DPM-Solver++ 20 steps, CFG 4.5", dict(name="dpm", steps=20, cfg_scale=4.5)),
    ("teacher DPM-Solver++ 4 steps, CFG 4.5", dict(name="dpm", steps=4, cfg_scale=4.5)),
    ("LCM 1 step", dict(name="lcm", steps=1)),
    ("LCM 2 steps", dict(name="lcm", steps=2)),
    ("LCM 4 steps", dict(name="lcm", steps=4)),
]


def comparison_grid(cfg: Config, teacher: Path, student: Path, out: Path) -> Path:
    """One row per prompt, one column per sampler of ``COLUMNS``."""
    pipes = {"teacher": load_pipeline(cfg, teacher)}
    pipes["lcm"] = load_pipeline(cfg, student, like=pipes["teacher"])
    columns = []
    for label, sampler in COLUMNS:
        pipe = pipes["lcm" if sampler["name"] == "lcm" else "teacher"]
        columns.append(pipe(VALIDATION_PROMPTS, seed=0, **sampler))
        print(f"  {label}: {pipe.nfe} model evaluations per image")
    images = torch.stack(columns, dim=1).flatten(0, 1)  # (prompts * columns, 3, H, W), row-major by prompt
    path = save_grid(images, out, columns=len(COLUMNS))
    legend = out.with_suffix(".txt")
    legend.write_text("columns: " + " | ".join(c for c, _ in COLUMNS) + "\nrows:\n" + "\n".join(VALIDATION_PROMPTS))
    return path


def controlnet_grid(teacher_pipe: Pipeline, student: Path, out: Path) -> Path:
    """Rows: validation prompts; columns: the edge map, the teacher with the ControlNet (DPM-Solver++ 20, CFG 4.5) and
    the 4-step LCM student with the same ControlNet applied as it is (route (a) of issue 8: no re-training)."""
    cfg = Config.fromfile(str(CONTROLNET_CONFIG))
    teacher = load_pipeline(cfg, CONTROLNET, like=teacher_pipe)
    lcm = load_pipeline(with_weights(cfg, base=str(student)), CONTROLNET, like=teacher_pipe)  # the same copies
    size = teacher_pipe.resolution[0]
    control = torch.from_numpy(prompt_edges(VALIDATION_PROMPTS, size, CONTROL_OFFSET)).permute(0, 3, 1, 2)
    columns = [
        control,
        teacher(VALIDATION_PROMPTS, seed=0, control=control, name="dpm", steps=20, cfg_scale=4.5),
        lcm(VALIDATION_PROMPTS, seed=0, control=control, name="lcm", steps=4),
    ]
    path = save_grid(torch.stack(columns, dim=1).flatten(0, 1), out, columns=len(columns))
    out.with_suffix(".txt").write_text(
        "columns: control edges | teacher + ControlNet, DPM-Solver++ 20 steps, CFG 4.5 | LCM student + the same "
        "ControlNet, 4 steps\nrows:\n" + "\n".join(VALIDATION_PROMPTS)
    )
    return path


def run(out: str | Path = "output/demo", steps: int | None = None, eval_images: int = 240) -> None:
    """The whole demo into ``out`` (module docstring); ``steps`` overrides the distillation's ``train.max_steps``,
    ``eval_images`` is the number of images per row of the reproduction table."""
    out, start = Path(out), time.time()
    cfg = Config.fromfile(str(LCM_CONFIG))
    ensure_embedded_default(root=cfg.data.root, text_encoder_path=cfg.text_encoder.path, progress=True)
    print(f"[demo] embedded data ready ({time.time() - start:.0f} s)")
    if not TEACHER.is_file():
        print(f"[demo] {shown(TEACHER)} missing: training the tiny teacher (make teacher)")
        make_teacher()
    if steps:
        cfg.merge_from_dict({"train.max_steps": steps})
    note = dist.portable_precision(cfg)
    if note:
        print(f"[demo] {note}")
    # resume only a distillation of this very teacher; one of an older teacher is moved aside
    work_dir = claim_run_dir(out / "lcm", file_hash(TEACHER), on_other="move")
    finished = Trainer(cfg, work_dir, resume="auto").train()
    dist.cleanup()
    require_finished(finished, "run make demo again to resume it")
    student = find_latest(work_dir) / "model.safetensors"
    print(f"[demo] LCM distillation done ({time.time() - start:.0f} s); student: {student}")
    grid = comparison_grid(cfg, TEACHER, student, out / "teacher_vs_lcm.png")
    print(f"[demo] comparison grid: {grid} ({time.time() - start:.0f} s)")
    table_cfg = Config.fromfile(str(LCM_CONFIG))  # as tools/reproduce_lcm.py reads it
    reproduce(table_cfg, TEACHER, student, out / "reproduce_lcm", num_images=eval_images)
    if CONTROLNET.is_file():
        teacher_pipe = load_pipeline(cfg, TEACHER)
        grid = controlnet_grid(teacher_pipe, student, out / "controlnet.png")
        print(f"[demo] ControlNet grid: {grid} ({time.time() - start:.0f} s)")
    else:
        print(f"[demo] {shown(CONTROLNET)} missing (make controlnet trains it): no ControlNet grid")
    print(f"[demo] finished in {(time.time() - start) / 60:.1f} min; see {out}/")
