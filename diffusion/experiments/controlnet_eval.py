"""The evaluation of a ControlNet setting for ``tools/reproduce_controlnet.py`` (PixArt-delta §4.2-4.4): the rendered
evaluation set, sampling with and without control, edge F1 / FID / SWD / attribute accuracy of one pipeline, the 4-step
controllable LCM group of a route-(b) run, a ControlNet put on an LCM student as it is (route (a), ``--lcm-student``),
and edge F1 against training step over a run's checkpoints.

Every LCM student row samples under the student's diffusion process (its config's LCM settings), never the
ControlNet run's: a route-(b) run's config is the student's distillation config (its ``_base_``); for
``--lcm-student`` the student's config is found by :func:`student_config`.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from mmengine.config import Config

from diffusion.build import load_pipeline, teacher_config, weight_sources, with_weights, without_controlnet
from diffusion.data.annotators import to_control_image
from diffusion.data.embedded import all_attribute_combinations, caption, render
from diffusion.engine.checkpoint import list_checkpoints, parse_step
from diffusion.eval import attribute_accuracy, compute_statistics, extract_features, frechet_distance
from diffusion.eval.edges import generated_edge_f1
from diffusion.eval.swd import swd
from diffusion.paths import config_path
from diffusion.pipeline import Pipeline
from diffusion.schedulers import DiffusionProcess

SAMPLER = dict(name="dpm", steps=20, cfg_scale=4.5)
LCM = dict(name="lcm", steps=4)  # routes (a) and (b): the 4-step LCM sampler, no CFG
DPM14 = dict(SAMPLER, steps=14)
GRID = 8


def eval_set(num: int, seed: int = 1) -> dict:
    """``num`` rendered shapes (seeded, not the training images): prompts, conflicting prompts, images, edges."""
    combos = all_attribute_combinations()
    order = np.random.default_rng(seed).permutation(len(combos))
    chosen = [combos[order[i % len(combos)]] for i in range(num)]
    images, edges = zip(*(render(a, 32) for a in chosen))
    # conflicting caption: another shape at another position (colours and backgrounds kept, so FID stays fair)
    others = [
        dict(a, shape=chosen[(i + 1) % num]["shape"], position=chosen[(i + 2) % num]["position"])
        for i, a in enumerate(chosen)
    ]
    return dict(
        prompts=[caption(a) for a in chosen],
        conflict=[caption(a) for a in others],
        images=torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).contiguous(),
        edges=torch.from_numpy(np.stack(edges))[:, None].float() / 255.0,  # (N, 1, H, W) in {0, 1}
    )


def generate(
    pipe: Pipeline, prompts: list[str], control: torch.Tensor | None, batch: int, sampler: dict = SAMPLER
) -> torch.Tensor:
    """``prompts`` sampled ``batch`` at a time (seed: the batch's index), under ``control`` ((N, 3, H, W) uint8) when
    given."""
    out = []
    for b, i in enumerate(range(0, len(prompts), batch)):
        extra = {} if control is None else {"control": control[i : i + batch]}
        out.append(pipe(prompts[i : i + batch], seed=b, **sampler, **extra))
    return torch.cat(out)


def evaluate(
    pipe,
    data,
    controlled: bool,
    batch: int,
    extractor,
    classifier,
    ref,
    sampler: dict = SAMPLER,
    reference: torch.Tensor | None = None,
) -> tuple[dict, dict]:
    """``data``'s matched and conflicting prompts sampled by ``pipe`` (under its edge maps when ``controlled``): the
    row (edge F1 of each, FID against ``ref`` = (mu, sigma), SWD x 1e3 per pyramid level and ``avg`` against the real
    images ``reference`` (uint8 (N, 3, H, W), the ones ``ref`` was computed on; no ``swd`` without them),
    all-attributes accuracy; FID, SWD and attributes of the matched samples) and the first ``GRID`` images."""
    control = to_control_image(data["edges"]) if controlled else None
    matched = generate(pipe, data["prompts"], control, batch, sampler)
    conflict = generate(pipe, data["conflict"], control, batch, sampler)
    mu, sigma = compute_statistics(extract_features(extractor, matched.split(batch), progress=False))
    acc = attribute_accuracy(classifier, matched, data["prompts"])
    row = dict(
        f1=generated_edge_f1(matched, data["edges"]).mean().item(),
        f1_conflict=generated_edge_f1(conflict, data["edges"]).mean().item(),
        fid=frechet_distance(mu, sigma, *ref),
        attr_all=acc["all"],
    )
    if reference is not None:
        row["swd"] = swd(reference, matched)
    return row, dict(matched=matched[:GRID], conflict=conflict[:GRID])


def controllable_lcm_rows(cfg: Config, checkpoint: Path, label: str, teacher: Pipeline) -> list[tuple]:
    """``(setting, pipeline, controlled, sampler, step)`` of the 4-step controllable LCM group of a route-(b) run
    ``cfg`` (the LCM method on a ControlNet; ``weights.base`` = the LCM student, ``weights.controlnet`` = the
    ControlNet trained on the teacher, ``weights.teacher`` = the teacher)."""
    weights = weight_sources(cfg)
    if weights.controlnet is None or not weights.teacher_apart:
        raise SystemExit(f"{label}: a route-(b) run needs weights.controlnet and weights.teacher beside weights.base")
    # built once, sampled at 14 and at 20 steps
    on_teacher = load_pipeline(teacher_config(cfg), like=teacher)
    step = parse_step(checkpoint.name)
    student = load_pipeline(without_controlnet(cfg), like=teacher)
    return [
        ("LCM student 4 steps, no control", student, False, LCM, None),
        ("teacher + its ControlNet, DPM-Solver++ 14 steps", on_teacher, True, DPM14, None),
        ("teacher + its ControlNet, DPM-Solver++ 20 steps", on_teacher, True, SAMPLER, None),
        ("route (a): that ControlNet on the LCM student, 4 steps", load_pipeline(cfg, like=teacher), True, LCM, 0),
        (f"{label}, 4 steps", load_pipeline(cfg, checkpoint, like=teacher), True, LCM, step),
    ]


def student_config(student: str | Path, config: str | Path | None = None) -> Config:
    """The config the LCM student ``student`` (weights file or trainer step folder) was distilled with: ``config``
    when given; else the ``config.py`` of the run a step folder belongs to (``<run>/checkpoints/step_X[/model.*]``);
    else the config a published asset's ``meta.json`` names (``assets/tiny_lcm``). None of these: SystemExit."""
    if config is not None:
        return Config.fromfile(str(config))
    path = Path(student)
    folder = path if path.is_dir() else path.parent
    run = folder.parent.parent / "config.py"
    if parse_step(folder.name) is not None and run.is_file():
        return Config.fromfile(str(run))
    meta = folder / "meta.json"
    named = json.loads(meta.read_text()).get("config") if meta.is_file() else None
    if named:
        return Config.fromfile(str(config_path(named, f"{meta} config")))
    raise SystemExit(
        f"--lcm-student {student}: its config (whose LCM settings it is sampled under) is not beside it (no run "
        "config.py, no meta.json naming one); pass --lcm-student-config"
    )


def student_rows(
    cfg: Config, checkpoint: Path, label: str, student: str | Path, student_cfg: Config, teacher: Pipeline
) -> list[tuple]:
    """``(setting, pipeline, controlled, sampler)`` of the LCM student ``student`` alone and, route (a), with the
    ControlNet of the diffusion-loss run ``cfg`` (weights ``checkpoint``, named ``label``) on its base as it is; both
    4 LCM steps under the student's process (``student_cfg``'s LCM settings, not ``cfg``'s)."""
    process = DiffusionProcess.from_config(student_cfg)
    on_student = with_weights(cfg, base=str(student))  # the ControlNet's base: the student
    alone = load_pipeline(without_controlnet(on_student), like=teacher, process=process)
    controlled = load_pipeline(on_student, checkpoint, like=teacher, process=process)
    return [
        ("LCM student 4 steps, no control", alone, False, LCM),
        (f"LCM student 4 steps + {label} (route a)", controlled, True, LCM),
    ]


def edge_f1_curve(work_dir: Path, cfg: Config, data: dict, teacher: Pipeline, batch: int) -> list[dict]:
    """``[dict(step, f1, f1_conflict)]`` over every checkpoint of the run ``work_dir`` (its config ``cfg``) on ``data``
    (an :func:`eval_set`); a route-(b) run samples 4 LCM steps and starts at step 0, route (a)."""
    curve = []
    lcm = cfg.method.type == "LCMDistillation"  # a route-(b) run: 4 LCM steps; its step 0 is route (a)
    checkpoints = ([None] if lcm else []) + list_checkpoints(work_dir / "checkpoints")
    for checkpoint in checkpoints:
        pipe = load_pipeline(cfg, checkpoint, like=teacher)
        control = to_control_image(data["edges"])
        f1 = [
            generated_edge_f1(generate(pipe, data[k], control, batch, LCM if lcm else SAMPLER), data["edges"])
            .mean()
            .item()
            for k in ("prompts", "conflict")
        ]
        step = 0 if checkpoint is None else parse_step(checkpoint.name)
        curve.append(dict(step=step, f1=f1[0], f1_conflict=f1[1]))
        print(json.dumps(curve[-1]), flush=True)
    return curve
