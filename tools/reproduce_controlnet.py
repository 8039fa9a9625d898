"""The measured ControlNet ablation PixArt-delta §4.2-4.4 shows only as pictures, on the embedded default.

``--train [ROW ...]`` trains the ablation rows itself (``diffusion/experiments/controlnet_ablation.py``: N = 1, 2, 3,
5 of the tiny teacher's 6 blocks and the UNet baseline, all of them when none is named), each ``--train-steps`` steps
through the trainer into ``--work-root/<row>``; a row already trained with the same config is not retrained, an
interrupted one resumes. Each ``--run NAME=WORK_DIR`` adds a ControlNet training run of your own (its dumped
``config.py`` gives the topology and N; its latest checkpoint, or the one given as ``WORK_DIR/checkpoints/step_X``,
the weights). Trained rows (first) and runs are evaluated alike. Controls are exact edge maps of freshly rendered
shapes (not training images); every row samples the same prompts, seeds and controls with the teacher's sampler
(DPM-Solver++ 20 steps, CFG 4.5):

- edge F1 (tolerance 1 px) between the control edges and Canny on the generated image, with the control's own
  caption (matched) and with another shape's caption (conflicting: the control must win over the prompt);
- FID (embedded attribute-classifier features, comparable between rows only), SWD (multi-scale sliced Wasserstein
  distance on Laplacian-pyramid patches of the pixels, x 1e3: sees noise, blur and texture that those features miss;
  ``diffusion/eval/swd.py``), both against the same real embedded-dataset images, and prompt-attribute accuracy,
  matched.

Reference rows: the teacher without control, and the rendered images themselves (Canny on them: the edge metric's
ceiling; their SWD: what real images score against the real reference, the floor).

A run of the LCM method on a ControlNet (row ``b``, ``configs/controlnet/tiny_controlnet_lcm.py``, or any such
``--run``) adds the controllable 4-step rows of PixArt-delta §4: the LCM student alone; the ControlNet it started from
(trained on the teacher) on the teacher at DPM-Solver++ 14 and 20 steps; route (a), that ControlNet on the student as
it is; route (b), the same after the consistency distillation with the control passed; all LCM rows at 4 steps.
``--curve WORK_DIR`` (or the name of a ``--train`` row) adds edge F1 against training step over every checkpoint of
that run (the paper's "sudden convergence", §4.4). Writes ``table.md``, ``results.json``, ``grid.png`` (matched),
``grid_conflict.png`` and ``plot.png`` under ``--out``. The sampling and the metrics are
``diffusion/experiments/controlnet_eval.py``.

    python tools/reproduce_controlnet.py --train --curve n3    # the README's ablation rows: 150 steps x batch 16
    python tools/reproduce_controlnet.py --run "N=3=output/tiny_controlnet_run" --curve output/tiny_controlnet_run
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch
from mmengine.config import Config

from diffusion.build import load_pipeline, teacher_config, without_controlnet
from diffusion.data.annotators import to_control_image
from diffusion.engine.checkpoint import find_latest, parse_step
from diffusion.engine.validation import save_grid
from diffusion.eval import build_feature_extractor, statistics_of
from diffusion.eval.edges import generated_edge_f1
from diffusion.eval.swd import swd
from diffusion.experiments.controlnet_ablation import ROW_NAMES, select_rows, train_rows
from diffusion.experiments.controlnet_eval import (
    GRID,
    SAMPLER,
    controllable_lcm_rows,
    edge_f1_curve,
    eval_set,
    evaluate,
    student_config,
    student_rows,
)
from diffusion.experiments.lcm_quality import reference_images, swd_caption, swd_cell
from diffusion.pipeline import Pipeline


def run_config(work_dir: Path) -> Config:
    path = work_dir / "config.py"
    if not path.is_file():
        raise FileNotFoundError(f"{work_dir} is not a training run (no config.py)")
    return Config.fromfile(str(path))


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", action="append", default=[], help="LABEL=WORK_DIR of a ControlNet training run")
    parser.add_argument(
        "--train",
        nargs="*",
        default=None,
        metavar="ROW",
        help=f"train these ablation rows (of {ROW_NAMES}; all when none is named) before evaluating them",
    )
    parser.add_argument("--train-steps", type=int, default=150, help="training steps of every --train row")
    parser.add_argument("--train-batch-size", type=int, default=None, help="default: the config's (16)")
    parser.add_argument(
        "--work-root", default=None, help="--train rows train in WORK_ROOT/<row>; default output/cn_ablation/<N>steps"
    )
    parser.add_argument(
        "--cfg-options", nargs="+", default=[], metavar="K=V", help="config overrides of every --train row"
    )
    parser.add_argument(
        "--replace-stale",
        action="store_true",
        help="move a --train row's dir holding a run of another config aside and retrain (default: refuse)",
    )
    parser.add_argument(
        "--curve", default=None, help="WORK_DIR, or a --train row, whose every checkpoint gives the F1-vs-step plot"
    )
    parser.add_argument("--num-images", type=int, default=64)
    parser.add_argument("--curve-images", type=int, default=32)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument(
        "--lcm-student",
        default=None,
        help="4-step LCM student weights: adds the student without control and, route (a), the last row's "
        "ControlNet (the last --run, else the last --train row) applied to it as it is (no re-training), both with "
        "the LCM sampler at 4 steps",
    )
    parser.add_argument(
        "--lcm-student-config",
        default=None,
        help="the config the --lcm-student was distilled with (its LCM settings sample it); default: its run's "
        "config.py (a trainer step folder) or the config its meta.json names (assets/tiny_lcm)",
    )
    parser.add_argument("--out", default="output/reproduce_controlnet")
    return parser.parse_args(argv)


def resolve_runs(args: argparse.Namespace) -> list[tuple[str, Path]]:
    """``[(label, work_dir)]``: the ``--train`` rows (trained, resumed or found finished), then the ``--run`` ones;
    a ``--curve`` naming a trained row becomes its work dir."""
    trained = []
    if args.train is not None:
        rows = select_rows(args.train)
        if args.curve in ROW_NAMES and args.curve not in [r.name for r in rows]:
            raise SystemExit(f"--curve {args.curve} names a row that --train does not train")
        work_root = Path(args.work_root or f"output/cn_ablation/{args.train_steps}steps")
        trained = train_rows(
            rows, work_root, args.train_steps, args.train_batch_size, args.cfg_options, args.replace_stale
        )
    elif args.cfg_options or args.replace_stale:
        raise SystemExit("--cfg-options and --replace-stale apply to --train rows only")
    by_name = {row.name: work_dir for row, work_dir in trained}
    if args.curve in by_name:
        args.curve = str(by_name[args.curve])
    runs = [(row.label, work_dir) for row, work_dir in trained]
    runs += [(label, Path(path)) for label, path in (r.rsplit("=", 1) for r in args.run)]
    if not runs:
        raise SystemExit("give --train [ROW ...] or at least one --run LABEL=WORK_DIR")
    return runs


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    runs = resolve_runs(args)
    torch.manual_seed(0)  # after any training: the evaluation is the same whether the rows were trained now or not
    first = run_config(runs[0][1])
    extractor = build_feature_extractor("embedded")
    ref = statistics_of(first.data.root, extractor, num=args.num_images, progress=False)[:2]
    data = eval_set(args.num_images)
    teacher = load_pipeline(without_controlnet(teacher_config(first)))  # a route-(b) run's base is the student
    reference = reference_images(first.data.root, args.num_images, teacher.resolution[0])  # the images of ``ref``
    results, grids = [], {"matched": [data["images"][:GRID], to_control_image(data["edges"][:GRID])], "conflict": []}
    grids["conflict"].append(grids["matched"][1])
    ceiling = generated_edge_f1(data["images"], data["edges"]).mean().item()
    results.append(
        dict(
            setting="rendered images (metric ceiling)",
            f1=ceiling,
            f1_conflict=float("nan"),
            swd=swd(reference, data["images"]),
        )
    )

    def add(setting: str, pipe: Pipeline, controlled: bool, sampler: dict = SAMPLER, step: int | None = None) -> None:
        row, g = evaluate(pipe, data, controlled, args.batch_size, extractor, extractor.net, ref, sampler, reference)
        results.append(dict(setting=setting, **({} if step is None else {"step": step}), **row))
        grids["matched"].append(g["matched"]), grids["conflict"].append(g["conflict"])
        print(json.dumps(results[-1]), flush=True)

    add("teacher, no control", teacher, False)
    routes, last = [], None
    for label, work_dir in runs:
        checkpoint = find_latest(work_dir)
        if parse_step(work_dir.name) is not None:  # a given checkpoint of a run: <work_dir>/checkpoints/step_XXXXXXX
            checkpoint, work_dir = work_dir, work_dir.parent.parent
        cfg = run_config(work_dir)
        if cfg.method.type == "LCMDistillation":  # route (b): evaluated with its LCM group below
            routes.append((label, cfg, checkpoint))
            continue
        add(label, load_pipeline(cfg, checkpoint, like=teacher), True, step=parse_step(checkpoint.name))
        last = (label, cfg, checkpoint)
    for label, cfg, checkpoint in routes:
        for row in controllable_lcm_rows(cfg, checkpoint, label, teacher):
            add(*row)
    if args.lcm_student:
        if last is None:
            raise SystemExit("--lcm-student needs a ControlNet run trained with the diffusion loss (a --run or row)")
        label, cfg, checkpoint = last  # its ControlNet weights sit on the student's base instead
        student_cfg = student_config(args.lcm_student, args.lcm_student_config)
        for row in student_rows(cfg, checkpoint, label, args.lcm_student, student_cfg, teacher):
            add(*row)
    curve, base, xlabel = [], (results[1]["f1"], results[1]["f1_conflict"]), "0 = teacher, no control"
    if args.curve:
        small = {k: v[: args.curve_images] for k, v in data.items()}
        cfg = run_config(Path(args.curve))
        curve = edge_f1_curve(Path(args.curve), cfg, small, teacher, args.batch_size)
        if cfg.method.type == "LCMDistillation":  # a route-(b) run: its step 0 is route (a)
            base, xlabel = (curve[0]["f1"], curve[0]["f1_conflict"]), "0 = route (a)"
    save_grid(torch.cat(grids["matched"]), out / "grid.png", columns=GRID)
    save_grid(torch.cat(grids["conflict"]), out / "grid_conflict.png", columns=GRID)
    if curve:
        plot_curve([c for c in curve if c["step"] > 0], *base, out / "plot.png", xlabel)
    (out / "results.json").write_text(json.dumps(dict(rows=results, curve=curve), indent=2))
    table = format_table(results, curve, args)
    (out / "table.md").write_text(table)
    print(table)
    return dict(rows=results, curve=curve, table=table)


def plot_curve(
    curve: list[dict], base_f1: float, base_conflict: float, path: Path, xlabel: str = "0 = teacher, no control"
) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = [0] + [c["step"] for c in curve]
    fig, ax = plt.subplots(figsize=(5, 3.2), dpi=120)
    ax.plot(steps, [base_f1] + [c["f1"] for c in curve], "o-", label="matched prompt")
    ax.plot(steps, [base_conflict] + [c["f1_conflict"] for c in curve], "s--", label="conflicting prompt")
    ax.set_xlabel(f"ControlNet training step ({xlabel})")
    ax.set_ylabel("edge F1 (1 px)")
    ax.set_ylim(0, 1)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def format_table(results: list[dict], curve: list[dict], args: argparse.Namespace) -> str:
    lines = [
        f"{args.num_images} rendered edge maps (not training images), DPM-Solver++ 20 steps CFG 4.5 (LCM rows: 4 LCM "
        "steps, no CFG), the same seeds in every row. Edge F1 (1 px) of Canny on the sample against the control; "
        "FID (embedded features, rows "
        "comparable only) and all-attributes-right accuracy with the matched caption. "
        f"{swd_caption(results, args.num_images)}",
        "",
        "| setting | step | edge F1 matched ↑ | edge F1 conflicting prompt ↑ | FID ↓ | SWD ×1e3 ↓ "
        "| attributes all-correct ↑ |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in results:
        fid = f"{r['fid']:.2f}" if "fid" in r else "–"
        attr = f"{r['attr_all']:.3f}" if "attr_all" in r else "–"
        conflict = "–" if np.isnan(r["f1_conflict"]) else f"{r['f1_conflict']:.3f}"
        cells = f"{r['f1']:.3f} | {conflict} | {fid} | {swd_cell(r)} | {attr}"
        lines.append(f"| {r['setting']} | {r.get('step', '–')} | {cells} |")
    if curve:
        lines += [
            "",
            f"Edge F1 against training step ({args.curve_images} controls):",
            "",
            "| step | F1 matched | F1 conflicting |",
            "|---|---|---|",
        ]
        lines += [f"| {c['step']} | {c['f1']:.3f} | {c['f1_conflict']:.3f} |" for c in curve]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
