"""``make demo`` (``tools/demo.py``): the main job on the embedded default, end to end on a CPU.

1. make the embedded data (32x32 captioned shapes, tiny T5, feature caches) if missing;
2. load the committed tiny teacher (``assets/tiny_teacher``; trained by ``make teacher`` if absent);
3. PixArt-delta LCM distillation of that teacher with the shared trainer (``configs/lcm/tiny_lcm.py``);
4. a comparison grid (teacher DPM-Solver++ 20 and 4 steps with CFG 4.5 next to LCM 1, 2, 4 steps, no CFG) and the
   small-scale reproduction table (:mod:`diffusion.experiments.lcm_quality`, ``tools/reproduce_lcm.py``: FID, SWD,
   prompt attributes, speed);
5. controllable generation (§4): the committed tiny ControlNet-Transformer (``assets/tiny_controlnet``, trained on the
   teacher by ``make controlnet``) on the teacher (DPM-Solver++ 20, CFG 4.5) and, as it is, on the freshly distilled
   4-step LCM student (sampled under the student's LCM settings), from edge maps of shapes drawn off the prompts'
   usual positions; all under ``output/demo/``;
6. every grid also enlarged 4x (nearest neighbour, ``*_x4.png``: 32 px images are too small to look at 1:1), and a
   summary (what was trained, the table, where the pictures are) printed and written to ``summary.md``.

The distillation is deterministic on a given machine: a rerun with the same number of CPU threads gives the same
student bit for bit (and so the same table). Another thread count (``OMP_NUM_THREADS``, ``torch.set_num_threads``)
splits the CPU kernels' parallel sums differently (first seen in the patch embedding's bf16 conv weight gradient) and
so changes the student's last digits; the summary names the count.
"""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path

import torch
from mmengine.config import Config
from PIL import Image

from diffusion.build import load_pipeline, with_weights
from diffusion.data import VALIDATION_PROMPTS, ensure_embedded_default
from diffusion.data.embedded import prompt_edges
from diffusion.engine import Trainer, dist, find_latest, require_finished
from diffusion.engine.checkpoint import claim_run_dir, parse_step
from diffusion.engine.validation import save_grid
from diffusion.experiments.assets import config_hash, file_hash, make_teacher
from diffusion.experiments.lcm_quality import reproduce
from diffusion.paths import repo_path, shown
from diffusion.pipeline import Pipeline
from diffusion.schedulers import DiffusionProcess

TEACHER = repo_path("assets/tiny_teacher/model.safetensors")
LCM_CONFIG = repo_path("configs/lcm/tiny_lcm.py")
CONTROLNET = repo_path("assets/tiny_controlnet/model.safetensors")
CONTROLNET_CONFIG = repo_path("configs/controlnet/tiny_controlnet.py")
CONTROL_OFFSET = (3, -3)  # (row, col) px: the edges sit off the prompt's usual spot, so following them shows
ENLARGE = 4  # the *_x4.png copies: nearest neighbour, so every generated pixel stays a sharp 4x4 block
COLUMNS = [  # (label, sampler settings)
    ("teacher DPM-Solver++ 20 steps, CFG 4.5", dict(name="dpm", steps=20, cfg_scale=4.5)),
    ("teacher DPM-Solver++ 4 steps, CFG 4.5", dict(name="dpm", steps=4, cfg_scale=4.5)),
    ("LCM 1 step", dict(name="lcm", steps=1)),
    ("LCM 2 steps", dict(name="lcm", steps=2)),
    ("LCM 4 steps", dict(name="lcm", steps=4)),
]
CONTROL_COLUMNS = (
    "control edges | teacher + ControlNet, DPM-Solver++ 20 steps, CFG 4.5 | LCM student + the same ControlNet, 4 steps"
)


def enlarged(path: Path, factor: int = ENLARGE) -> Path:
    """Write ``<stem>_x<factor>.png`` next to the PNG at ``path``: each pixel a ``factor`` x ``factor`` block."""
    out = path.with_name(f"{path.stem}_x{factor}.png")
    with Image.open(path) as image:
        image.resize((image.width * factor, image.height * factor), Image.Resampling.NEAREST).save(out)
    return out


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


def controlnet_pipelines(teacher_pipe: Pipeline, student: Path, student_cfg: Config) -> tuple[Pipeline, Pipeline]:
    """The committed ControlNet on the teacher and, as it is (route (a) of issue 8: no re-training), on the student
    ``student`` distilled with ``student_cfg``, sampled under that config's process (its LCM settings), not the
    ControlNet config's (the teacher's run)."""
    cfg = Config.fromfile(str(CONTROLNET_CONFIG))
    teacher = load_pipeline(cfg, CONTROLNET, like=teacher_pipe)
    lcm_cfg = with_weights(cfg, base=str(student))  # the same ControlNet weights on the student base
    process = DiffusionProcess.from_config(student_cfg)
    return teacher, load_pipeline(lcm_cfg, CONTROLNET, like=teacher_pipe, process=process)


def controlnet_grid(teacher_pipe: Pipeline, student: Path, student_cfg: Config, out: Path) -> Path:
    """Rows: validation prompts; columns: the edge map, the teacher with the ControlNet (DPM-Solver++ 20, CFG 4.5) and
    the 4-step LCM student with the same ControlNet (:func:`controlnet_pipelines`)."""
    teacher, lcm = controlnet_pipelines(teacher_pipe, student, student_cfg)
    size = teacher_pipe.resolution[0]
    control = torch.from_numpy(prompt_edges(VALIDATION_PROMPTS, size, CONTROL_OFFSET)).permute(0, 3, 1, 2)
    columns = [
        control,
        teacher(VALIDATION_PROMPTS, seed=0, control=control, name="dpm", steps=20, cfg_scale=4.5),
        lcm(VALIDATION_PROMPTS, seed=0, control=control, name="lcm", steps=4),
    ]
    path = save_grid(torch.stack(columns, dim=1).flatten(0, 1), out, columns=len(columns))
    out.with_suffix(".txt").write_text(f"columns: {CONTROL_COLUMNS}\nrows:\n" + "\n".join(VALIDATION_PROMPTS))
    return path


def run_digest(cfg: Config) -> str:
    """What a resumable distillation dir is tied to: the teacher file and the config as it trains (steps included),
    so that ``make demo`` continues only a run of this very teacher and config and moves any other aside."""
    return hashlib.sha256(f"{file_hash(TEACHER)} {config_hash(cfg)}".encode()).hexdigest()


def training_record(cfg: Config, work_dir: Path, student: Path, seconds: float | None) -> dict:
    """What was trained, for the summary (``seconds`` None: the run was finished before, nothing trained now)."""
    lines = (work_dir / "metrics.jsonl").read_text().splitlines() if (work_dir / "metrics.jsonl").is_file() else []
    tc = cfg.train
    return dict(
        teacher=shown(TEACHER),
        config=shown(LCM_CONFIG),
        steps=parse_step(student.parent.name),
        batch_size=tc.batch_size,
        precision=tc.mixed_precision,
        seed=tc.seed,
        threads=torch.get_num_threads(),
        final_loss=json.loads(lines[-1]).get("loss") if lines else None,
        seconds=seconds,
        student=shown(student),
    )


def summary(trained: dict, table: str, pictures: list[tuple[Path, Path, str]], out: Path, minutes: float) -> str:
    """The demo's closing text (markdown): what was trained, the table, where the pictures are."""
    t = trained
    threads = f"{t['threads']} CPU thread{'s' * (t['threads'] != 1)}"
    took = f"{t['seconds'] / 60:.1f} min" if t["seconds"] is not None else "trained by an earlier run, reused"
    loss = f"; final loss {t['final_loss']:.4f}" if t["final_loss"] is not None else ""
    lines = [
        f"# make demo: PixArt-δ on the embedded default ({minutes:.1f} min)",
        "",
        f"Trained: LCM distillation (PixArt-δ §3, Algorithm 1) of the committed tiny teacher `{t['teacher']}` with "
        f"`{t['config']}`: {t['steps']} steps of batch {t['batch_size']}, mixed precision {t['precision']}, seed "
        f"{t['seed']}, {threads}, {took}{loss}. Student: `{t['student']}`. A rerun on this machine with {threads} "
        "gives the same student bit for bit, and this table but its timings.",
        "",
        table.rstrip(),
        "",
        f"Pictures (1:1, and enlarged {ENLARGE}x with nearest neighbour to look at):",
    ]
    for grid, big, what in pictures:
        lines.append(f"- `{shown(grid)}`, `{shown(big)}`: {what}")
    lines.append(f"\nEverything is under `{shown(out)}/` (this text: `{shown(out / 'summary.md')}`).")
    return "\n".join(lines) + "\n"


def run(out: str | Path = "output/demo", steps: int | None = None, eval_images: int = 240) -> str:
    """The whole demo into ``out`` (module docstring); ``steps`` overrides the distillation's ``train.max_steps``,
    ``eval_images`` is the number of images per row of the reproduction table. Returns the summary."""
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
    # resume only a distillation of this very teacher and config; one of another is moved aside
    work_dir = claim_run_dir(out / "lcm", run_digest(cfg), on_other="move")
    already = (latest := find_latest(work_dir)) is not None and parse_step(latest.name) == cfg.train.max_steps
    train_start = time.time()
    finished = Trainer(cfg, work_dir, resume="auto").train()
    dist.cleanup()
    require_finished(finished, "run make demo again to resume it")
    student = find_latest(work_dir) / "model.safetensors"
    trained = training_record(cfg, work_dir, student, None if already else time.time() - train_start)
    print(f"[demo] LCM distillation done ({time.time() - start:.0f} s); student: {student}")
    pictures = []
    grid = comparison_grid(cfg, TEACHER, student, out / "teacher_vs_lcm.png")
    legend = "columns: " + " | ".join(c for c, _ in COLUMNS) + "; one row per validation prompt"
    pictures.append((grid, enlarged(grid), legend))
    print(f"[demo] comparison grid: {grid} ({time.time() - start:.0f} s)")
    table_cfg = Config.fromfile(str(LCM_CONFIG))  # as tools/reproduce_lcm.py reads it
    table = reproduce(table_cfg, TEACHER, student, out / "reproduce_lcm", num_images=eval_images)["table"]
    grid = out / "reproduce_lcm" / "grid.png"
    pictures.append((grid, enlarged(grid), "one row per table row (same order), the first 8 evaluation prompts"))
    if CONTROLNET.is_file():
        teacher_pipe = load_pipeline(cfg, TEACHER)
        grid = controlnet_grid(teacher_pipe, student, cfg, out / "controlnet.png")
        pictures.append((grid, enlarged(grid), f"columns: {CONTROL_COLUMNS}; one row per validation prompt"))
        print(f"[demo] ControlNet grid: {grid} ({time.time() - start:.0f} s)")
    else:
        print(f"[demo] {shown(CONTROLNET)} missing (make controlnet trains it): no ControlNet grid")
    text = summary(trained, table, pictures, out, (time.time() - start) / 60)
    (out / "summary.md").write_text(text)
    print(f"\n{text}", flush=True)
    return text
