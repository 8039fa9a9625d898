"""Peak memory of training and inference: PixArt-delta Table 1 / §3.3 (training) and §4 (8-bit inference in 8 GB).

Two modes, one accounting (``diffusion.bench.memory``):

Synthetic rows (the default): one LCM distillation step with fp32 or half-precision frozen copies, a teacher step, a
ControlNet step and 1024² inference with bf16 or int8 T5; PixArt-Sigma's LCM step (its config: CAME, bf16 teacher,
300-token captions) and 4-step inference at 1024² with and without KV compression and at 2K (``sigma*`` rows,
``diffusion.bench.sigma_rows``). ``diffusion.bench.memory_rows`` lists them all. Each row runs in a fresh
subprocess so that one row's allocations never count towards another's. Each row is split into weights / gradients /
optimizer state (bytes of the tensors) and the rest of the peak (activations, workspaces, allocator slack). On a GPU
the peak is ``torch.cuda.max_memory_allocated`` at the real sizes; on a CPU it is the process's resident memory,
sampled every 2 ms, above what it held before building, at the reduced size of ``diffusion.bench.SIZES['cpu']``.

    python tools/benchmark_memory.py                          # CPU, reduced size
    python tools/benchmark_memory.py --device cuda            # GPU, the paper's sizes

Trainer run (``--trainer CONFIG``): a short run of the real trainer, per rank (torchrun-able): the peak resident set
size of the process (``getrusage``), the peak above the run's start (as for the rows), the peak CUDA allocation on a
GPU, and MiB of the model tensors the trainer holds by owner (the trained network, the method's frozen networks, the
EMA shadow, optimizer state, on-the-fly encoders, validation), counting only this rank's shards under FSDP; so that a
change of the trainer can be measured.

    python tools/benchmark_memory.py --trainer configs/lcm/tiny_lcm.py --random-teacher --steps 4 \\
        --json output/memory/one.json
    torchrun --nproc_per_node 2 tools/benchmark_memory.py --trainer configs/lcm/tiny_lcm.py --random-teacher \\
        --steps 4 --cfg-options train.parallel=fsdp --json output/memory/fsdp.json

``--random-teacher`` writes a random ``cfg.model`` as the teacher (for enlarged tiny models via ``--cfg-options
model.hidden_size=...``); ``--embedded-num N`` builds the embedded default with N images next to the work dir.

Simulated (no GPU needed, ``diffusion.bench.simulate``): ``--simulate`` runs the synthetic rows at ``--size full``
(default) on fake tensors with CUDA's rules and reports simulated peak *allocated* bytes, the same ``--json`` shape;
``--plan CONFIG --gpu NAME [NAME ...]`` prints the largest per-GPU batch of that config that fits each GPU, with and
without gradient checkpointing, with fp32 / bf16 frozen copies, alone and under FSDP on 2 and 8 GPUs
(``diffusion.bench.planner``; the headroom it keeps is printed with it).

    python tools/benchmark_memory.py --simulate --json output/memory/simulated.json
    python tools/benchmark_memory.py --simulate --rows sigma-lcm-bf16 sigma-kv-lcm-bf16 sigma2k-lcm-bf16
    python tools/benchmark_memory.py --plan configs/lcm/pixartms_xl2_img1024_lcm.py --gpu RTX4090-24GB A100-80GB

``--compare SIMULATED MEASURED`` prints, row by row, the simulated peak of one ``--json`` beside the measured
``torch.cuda.max_memory_allocated`` peak of another (a GPU run of the rows; a CPU run's column says it has none) and
their ratio (``tools/gpu_report.py`` does this for its memory step).

    python tools/benchmark_memory.py --compare output/gpu_report/memory_simulated.json output/gpu_report/memory.json
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
from pathlib import Path

import torch
from mmengine.config import DictAction

from diffusion.bench import get_size, machine
from diffusion.bench.gpus import CONTEXT_GIB, FRAGMENTATION, PLANNER_GPUS
from diffusion.bench.memory import (
    MIB,
    Peak,
    compare_markdown,
    held_bytes,
    process_peaks,
    ranks_markdown,
    rows_markdown,
    trainer_owners,
    write_json,
)
from diffusion.bench.memory_rows import BATCH, PAPER, ROWS, run_row

# Options of the trainer run (an error without --trainer) and their defaults.
TRAINER_DEFAULTS = dict(steps=4, work_dir="output/memory/run", random_teacher=False, embedded_num=256, cfg_options={})


def run_rows(args) -> dict:
    """Each row in its own process; a row that fails records why (e.g. out of memory) instead of a number."""
    results = {}
    for row in args.rows:
        cmd = [sys.executable, __file__, "--child", row, "--size", args.size, "--device", args.device]
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=args.row_timeout)
        except subprocess.TimeoutExpired:
            results[row] = {"error": f"ran past {args.row_timeout:g} s"}
            print(f"{row}: {results[row]}", file=sys.stderr, flush=True)
            continue
        lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
        if proc.returncode == 0 and lines:
            results[row] = json.loads(lines[-1])
        else:
            why = (proc.stderr.strip().splitlines() or ["no output"])[-1]
            results[row] = {"error": why[:200]}
        print(f"{row}: {results[row]}", file=sys.stderr, flush=True)
    return dict(machine=machine(), size=get_size(args.size).describe(), batch=BATCH[args.size], rows=results)


def trainer_config(args):
    """The config with the run's overrides; rank 0 writes the random teacher and the embedded default first."""
    from mmengine.config import Config
    from safetensors.torch import save_file

    from diffusion.build import with_weights
    from diffusion.config import weights_section
    from diffusion.engine import dist
    from diffusion.engine.checkpoint import CHECKPOINT_SUBDIR
    from diffusion.registry import MODELS

    cfg = Config.fromfile(args.trainer)
    cfg.merge_from_dict(args.cfg_options)
    work_dir = Path(args.work_dir)
    embedded = cfg.data.get("root") == "output/embedded_data"
    data_root = work_dir.parent / f"embedded_data_{args.embedded_num}"
    if dist.is_main():
        work_dir.mkdir(parents=True, exist_ok=True)
        # a scratch run: the previous measurement's checkpoints go, so the trainer starts afresh (it refuses to
        # start at step 0 over a run's checkpoints)
        shutil.rmtree(work_dir / CHECKPOINT_SUBDIR, ignore_errors=True)
        if embedded:
            from diffusion.data import ensure_embedded_default

            ensure_embedded_default(data_root, num=args.embedded_num, text_encoder_path=cfg.text_encoder["path"])
        if args.random_teacher:
            torch.manual_seed(0)
            model = MODELS.build(dict(cfg.model))
            state = {k: v.contiguous() for k, v in model.state_dict().items()}
            save_file(state, str(work_dir / "teacher.safetensors"))
    dist.barrier()
    if embedded:
        cfg.data.root = str(data_root)
    if args.random_teacher:  # every PixArt weight source the config names (its base, its teacher) is the random one
        named = [k for k, v in weights_section(cfg).items() if v is not None and k in ("base", "teacher")]
        cfg = Config(with_weights(cfg, **dict.fromkeys(named or ["base"], str(work_dir / "teacher.safetensors"))))
    cfg.merge_from_dict({"train.max_steps": args.steps, "checkpoint.every": 10**9})
    if cfg.get("validation"):
        cfg.merge_from_dict({"validation.every": 10**9})  # only the final grid
    return cfg


def run_trainer(args) -> dict:
    """``args.steps`` optimizer steps of the real trainer (one validation grid at the end); every rank's report."""
    from diffusion.engine import Trainer, dist

    device = dist.init()
    cfg = trainer_config(args)
    base = Peak(device).now()
    with Peak(device) as peak:
        trainer = Trainer(cfg, Path(args.work_dir), resume=None)
        trainer.train()
    report = dict(
        rank=dist.rank(),
        world=dist.world_size(),
        parallel=trainer.train_cfg["parallel"],
        **process_peaks(),
        peak_above_start_mib=(peak.peak - base) / MIB,
        tensors_mib={k: v / MIB for k, v in held_bytes(trainer_owners(trainer)).items()},
    )
    reports = [report]
    if dist.is_initialized():
        reports = [None] * dist.world_size()
        torch.distributed.all_gather_object(reports, report)
    return dict(machine=machine(), config=args.trainer, steps=args.steps, ranks=reports)


def run_simulated(args) -> dict:
    """``--simulate``: the rows on fake tensors; ``--plan``: the planner's answer for each ``--gpu``."""
    if args.plan:
        from diffusion.bench.planner import Planner, plan_markdown

        planner = Planner(args.plan, log=lambda line: print(line, file=sys.stderr, flush=True))
        plans = [planner.plan(gpu, args.context_gib, args.fragmentation) for gpu in args.gpu]
        print("\n\n".join(plan_markdown(p) for p in plans))
        return dict(plans=plans, simulations=len(planner.cache), seconds=planner.seconds)
    from diffusion.bench.simulate import simulate_rows

    result = simulate_rows(args.rows, args.size)
    print(rows_markdown(result, PAPER))
    return result


def parse_args(argv: list[str] | None = None):
    cuda = torch.cuda.is_available()
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--json", default=None, help="also write the results here (rank 0)")
    rows = parser.add_argument_group("synthetic rows")
    rows.add_argument("--device", default="cuda" if cuda else "cpu")
    rows.add_argument(
        "--size", default=None, choices=sorted(BATCH), help="default: full on GPU or --simulate, else cpu"
    )
    rows.add_argument("--rows", nargs="+", default=list(ROWS), choices=list(ROWS))
    rows.add_argument("--row-timeout", type=float, default=600)
    rows.add_argument("--child", default=None, choices=list(ROWS), help=argparse.SUPPRESS)
    run = parser.add_argument_group("trainer run")
    run.add_argument("--trainer", default=None, metavar="CONFIG", help="measure a short run of this config instead")
    run.add_argument("--steps", type=int, help="optimizer steps (one validation grid at the end); default 4")
    run.add_argument("--work-dir", help=f"default {TRAINER_DEFAULTS['work_dir']}")
    run.add_argument("--random-teacher", action="store_true", help="a random cfg.model as weights.base / .teacher")
    run.add_argument("--embedded-num", type=int, help="images of the embedded default, if used; default 256")
    run.add_argument("--cfg-options", nargs="+", action=DictAction)
    sim = parser.add_argument_group("simulated (fake tensors, CUDA's rules; no GPU needed)")
    sim.add_argument("--simulate", action="store_true", help="the synthetic rows, simulated (default --size full)")
    sim.add_argument("--plan", metavar="CONFIG", help="largest per-GPU batch of CONFIG on each --gpu")
    sim.add_argument("--gpu", nargs="+", default=["A100-80GB"], help=f"GPUs for --plan: {', '.join(PLANNER_GPUS)}")
    sim.add_argument("--context-gib", type=float, default=CONTEXT_GIB, help="kept free for the CUDA context")
    sim.add_argument("--fragmentation", type=float, default=FRAGMENTATION, help="share of the rest kept free")
    sim.add_argument("--compare", nargs=2, metavar=("SIMULATED", "MEASURED"), help="two --json results, side by side")
    args = parser.parse_args(argv)
    if args.compare and (args.simulate or args.plan or args.trainer):
        parser.error("--compare reads two earlier results: it runs nothing else")
    if (args.simulate or args.plan) and args.trainer:
        parser.error("--simulate / --plan and --trainer are different modes: pick one")
    given = [k for k in TRAINER_DEFAULTS if getattr(args, k) not in (None, False)]
    if given and args.trainer is None:
        parser.error(f"--{given[0].replace('_', '-')} belongs to a trainer run: add --trainer CONFIG")
    for key, default in TRAINER_DEFAULTS.items():
        setattr(args, key, default if getattr(args, key) is None else getattr(args, key))
    args.size = args.size or ("full" if args.device.startswith("cuda") or args.simulate else "cpu")
    return args


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    if args.compare:
        simulated, measured = (json.loads(Path(f).read_text()) for f in args.compare)
        print(compare_markdown(simulated, measured))
        return dict(simulated=simulated, measured=measured)
    if args.child:
        row = run_row(args.child, args.size, args.device)
        print(json.dumps(row), flush=True)
        return row
    if args.simulate or args.plan:
        result = run_simulated(args)
        write_json(args.json, result)
        return result
    if args.trainer:
        from diffusion.engine import dist

        result = run_trainer(args)
        if dist.is_main():
            print(ranks_markdown(result))
            write_json(args.json, result)
        dist.cleanup()
        return result
    result = run_rows(args)
    print(rows_markdown(result, PAPER))
    write_json(args.json, result)
    return result


if __name__ == "__main__":
    main()
