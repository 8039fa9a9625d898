"""PixArt-delta Fig. 2 at small scale: how the guidance of LCM distillation shapes the 4-step student over training,
next to the teacher at 4 / 14 / 20 DPM-Solver++ steps across CFG scales.

Part 1 distils the tiny teacher (``configs/lcm/tiny_lcm.py``) three times, as the paper's Fig. 2 compares:
fixed guidance w = 3.5, fixed w = 4.5 (PixArt-delta's choice) and the LCM default, a w-embedding with w ~ U[3, 15]
sampled at w = 4.5. Every ``--every`` steps the 4-step LCM student's embedded FID and prompt-attribute accuracy are
measured on ``--num-images`` images (step 0 is the teacher's own weights under the LCM sampler).

Part 2 samples the teacher at 4, 14 and 20 steps for each ``--cfg-scales`` value, so that a step-count effect is not
mistaken for a guidance effect. The two conventions: the teacher's CFG ``uncond + s (cond - uncond)`` and LCM's
``cond + w (cond - uncond)`` are the same guidance at s = w + 1, so the LCM w = 4.5 is CFG 5.5 here.

FID is the embedded FID (features of the attribute classifier, see ``diffusion/eval/attribute_net.py``): comparable
between rows of this sweep only. The command is ``tools/sweep_lcm.py``.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from mmengine.config import Config
from torch import nn

from diffusion.build import load_pipeline
from diffusion.data import ensure_embedded_default
from diffusion.engine import Trainer, dist, require_finished
from diffusion.engine.checkpoint import list_checkpoints
from diffusion.eval import (
    attribute_accuracy,
    build_feature_extractor,
    compute_statistics,
    extract_features,
    frechet_distance,
    statistics_of,
)
from diffusion.experiments.lcm_quality import eval_prompts, generate
from diffusion.pipeline import Pipeline

# (name, label, config overrides, guidance the student is sampled at: None = no w-embedding)
VARIANTS = [
    ("w3.5", "LCM w = 3.5", {"method.w": 3.5}, None),
    ("w4.5", "LCM w = 4.5 (PixArt-delta)", {"method.w": 4.5}, None),
    (
        "wembed",
        "LCM w-embedding, w ~ U[3, 15], sampled at w = 4.5",
        {"model.guidance_embedding": True, "method.guidance_embedding": True, "method.w_range": (3.0, 15.0)},
        4.5,
    ),
]
TEACHER_STEPS = (4, 14, 20)


class WithGuidance(nn.Module):
    """A w-embedding student that always sees ``data_info['guidance'] = w`` (B,).

    The pipeline does not pass a guidance to the model yet, and ``PixArt.embed_conditions`` skips the w-embedding
    when ``data_info`` has no ``'guidance'``; without this wrapper the student would be sampled as if untrained
    in w. Attributes the pipeline reads (``in_channels``, ``y_embedder``, ...) come from the wrapped model.
    """

    def __init__(self, model: nn.Module, w: float) -> None:
        super().__init__()
        self.model, self.w = model, w

    def __getattr__(self, name: str):
        try:
            return super().__getattr__(name)
        except AttributeError:
            return getattr(super().__getattr__("model"), name)

    def forward(self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor, mask=None, data_info=None) -> torch.Tensor:
        info = dict(data_info or {})
        info["guidance"] = torch.full((x.shape[0],), self.w, device=x.device, dtype=torch.float32)
        return self.model(x, t, y, mask, info)


def check_guidance_reaches(model: WithGuidance, pipe: Pipeline) -> float:
    """Mean |output(w) - output(no guidance)| of the wrapped student on one noisy input: > 0 once the zero-initialised
    w-embedding has learned anything, which proves the w reaches ``embed_conditions``."""
    y, mask = pipe.encode(["a large red circle at the top left on a gray background"])
    x = torch.randn(1, model.in_channels, 16, 16, generator=torch.Generator().manual_seed(0)).to(y)
    t = torch.tensor([500], device=y.device)
    info = {"img_hw": torch.tensor([[32.0, 32.0]]), "aspect_ratio": torch.tensor([[1.0]])}
    with torch.no_grad():
        return (model(x, t, y, mask, info) - model.model(x, t, y, mask, info)).abs().mean().item()


class Scorer:
    """Embedded FID against ``num`` dataset images and prompt-attribute accuracy of generated images."""

    def __init__(self, data_root: str, num: int, batch_size: int) -> None:
        self.extractor = build_feature_extractor("embedded")
        self.ref = statistics_of(data_root, self.extractor, num=num, progress=False)[:2]
        self.batch_size = batch_size

    def __call__(self, images: torch.Tensor, prompts: list[str]) -> dict[str, float]:
        mu, sigma = compute_statistics(extract_features(self.extractor, images.split(self.batch_size), progress=False))
        acc = attribute_accuracy(self.extractor.net, images, prompts)
        return dict(
            fid=frechet_distance(mu, sigma, *self.ref),
            attr_all=acc["all"],
            attr_mean=float(np.mean([v for k, v in acc.items() if k != "all"])),
        )


def distil(
    cfg: Config, overrides: dict, work_dir: Path, steps: int, every: int, batch_size: int | None
) -> list[tuple[int, Path]]:
    """Run (or resume) one LCM distillation keeping a checkpoint every ``every`` steps; ``[(step, weights)]``."""
    cfg = Config(cfg.to_dict())  # a copy: the overrides of one variant must not leak into the next
    schedule = {"train.max_steps": steps, "checkpoint.every": every, "checkpoint.keep_last": 0}
    if batch_size is not None:
        schedule["train.batch_size"] = batch_size
    cfg.merge_from_dict({**overrides, **schedule})
    cfg.validation = None
    finished = Trainer(cfg, work_dir, resume="auto").train()
    dist.cleanup()
    require_finished(finished, "run the sweep again to resume it")
    return [(int(p.name.split("_")[-1]), p / "model.safetensors") for p in list_checkpoints(work_dir / "checkpoints")]


def sweep(
    config: str | Path,
    out: str | Path,
    steps: int = 150,
    every: int = 50,
    train_batch_size: int | None = None,
    num_images: int = 160,
    cfg_scales: Sequence[float] = (1.0, 2.5, 4.5, 5.5, 7.5),
    batch_size: int = 80,
) -> dict:
    """Both parts of the sweep (module docstring): distil each of :data:`VARIANTS` for ``steps`` steps (``config``
    with a ``train_batch_size``, None: the config's), scoring the 4-step student every ``every`` steps on
    ``num_images`` prompts; then the teacher at :data:`TEACHER_STEPS` x ``cfg_scales``. Writes ``results.json``,
    ``table.md`` and ``sweep.png`` under ``out``; returns the results."""
    settings = dict(config=str(config), steps=steps, every=every, train_batch_size=train_batch_size)
    settings.update(num_images=num_images, cfg_scales=list(cfg_scales), batch_size=batch_size, out=str(out))
    out, start = Path(out), time.time()
    out.mkdir(parents=True, exist_ok=True)
    cfg = Config.fromfile(str(config))
    ensure_embedded_default(root=cfg.data.root, text_encoder_path=cfg.text_encoder.path, progress=False)
    torch.manual_seed(0)
    score = Scorer(cfg.data.root, num_images, batch_size)
    prompts = eval_prompts(num_images)
    teacher = load_pipeline(cfg)  # weights.teacher (the committed tiny teacher): every variant's step 0
    lcm4 = dict(name="lcm", steps=4)

    curves: list[dict] = []
    base = dict(step=0, **score(generate(teacher, prompts, lcm4, batch_size)[0], prompts))
    for name, label, overrides, w in VARIANTS:
        checkpoints = distil(cfg, overrides, out / name, steps, every, train_batch_size)
        variant_cfg = Config(cfg.to_dict())
        variant_cfg.merge_from_dict(overrides)
        points = [base]
        for step, weights in checkpoints:
            pipe = load_pipeline(variant_cfg, weights, like=teacher)
            if w is not None:
                pipe = pipe.with_model(WithGuidance(pipe.model, w))
                gap = check_guidance_reaches(pipe.model, pipe)
                print(f"[sweep] {name} step {step}: mean |out(w={w}) - out(no w)| = {gap:.2e}", flush=True)
            points.append(dict(step=step, **score(generate(pipe, prompts, lcm4, batch_size)[0], prompts)))
            print(json.dumps(dict(variant=name, **points[-1])), flush=True)
        curves.append(dict(name=name, label=label, points=points))
        print(f"[sweep] {name} done ({time.time() - start:.0f} s)", flush=True)

    teacher_rows = []
    for teacher_steps in TEACHER_STEPS:
        for scale in cfg_scales:
            images, sec, nfe = generate(
                teacher, prompts, dict(name="dpm", steps=teacher_steps, cfg_scale=scale), batch_size
            )
            teacher_rows.append(
                dict(steps=teacher_steps, cfg_scale=scale, nfe=nfe, sec_per_image=sec, **score(images, prompts))
            )
            print(json.dumps(teacher_rows[-1]), flush=True)

    result = dict(args=settings, curves=curves, teacher=teacher_rows, wall_seconds=round(time.time() - start, 1))
    (out / "results.json").write_text(json.dumps(result, indent=2))
    table = format_tables(result)
    (out / "table.md").write_text(table)
    plot(result, out / "sweep.png")
    print(table)
    print(f"[sweep] wrote {out / 'table.md'} and {out / 'sweep.png'} ({result['wall_seconds']:.0f} s)")
    return result


def format_tables(result: dict) -> str:
    """Markdown: the students' curves (one row per checkpoint) and the teacher's steps x CFG grid."""
    a = result["args"]
    lines = [
        f"Embedded FID against {a['num_images']} dataset images and prompt-attribute accuracy of {a['num_images']} "
        "generated images per point (all five right / mean over attributes).",
        "",
        "4-step LCM student during distillation (step 0: the teacher's weights under the LCM sampler):",
        "",
        "| variant | step | FID ↓ | attributes all-correct ↑ | attribute mean ↑ |",
        "|---|---|---|---|---|",
    ]
    for curve in result["curves"]:
        for p in curve["points"]:
            lines.append(
                f"| {curve['label']} | {p['step']} | {p['fid']:.2f} | {p['attr_all']:.3f} | {p['attr_mean']:.3f} |"
            )
    lines += [
        "",
        "Teacher, DPM-Solver++ (CFG in the teacher's convention: the LCM w = 4.5 is CFG 5.5):",
        "",
        "| steps | CFG | FID ↓ | attributes all-correct ↑ | attribute mean ↑ | model evals / image |",
        "|---|---|---|---|---|---|",
    ]
    for r in result["teacher"]:
        lines.append(
            f"| {r['steps']} | {r['cfg_scale']:g} | {r['fid']:.2f} | {r['attr_all']:.3f} | {r['attr_mean']:.3f} | "
            f"{r['nfe']} |"
        )
    return "\n".join(lines) + "\n"


def plot(result: dict, path: Path) -> Path:
    """Three panels: student FID and attribute mean against distillation step, teacher FID against CFG scale."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(15, 4.2))
    for curve in result["curves"]:
        steps = [p["step"] for p in curve["points"]]
        axes[0].plot(steps, [p["fid"] for p in curve["points"]], marker="o", label=curve["label"])
        axes[1].plot(steps, [p["attr_mean"] for p in curve["points"]], marker="o", label=curve["label"])
    for steps in TEACHER_STEPS:
        rows = [r for r in result["teacher"] if r["steps"] == steps]
        axes[2].plot(
            [r["cfg_scale"] for r in rows], [r["fid"] for r in rows], marker="s", label=f"teacher {steps} steps"
        )
    axes[0].set(xlabel="distillation step", ylabel="embedded FID (4-step LCM)", title="student FID")
    axes[1].set(xlabel="distillation step", ylabel="attribute mean (4-step LCM)", title="student prompt attributes")
    axes[2].set(xlabel="CFG scale (teacher convention; LCM w = CFG - 1)", ylabel="embedded FID", title="teacher")
    for ax in axes:
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
