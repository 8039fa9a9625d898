"""tools/benchmark_memory.py at tiny size on the CPU, both modes.

Synthetic rows (a smoke test: no size asserts beyond the bookkeeping): the LCM step with half-precision frozen
copies, the teacher step and the int8 inference row run and split their memory; the subprocess driver records a row
that cannot run (here: out of time) instead of failing. Trainer run (``--trainer``): the real trainer on the tiny LCM
config holds the student, teacher + target (twice the student), an fp32 EMA shadow and Adam's two moments, and the
owners add up to the total; two FSDP ranks each hold half of every sharded parameter."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from mmengine.config import Config

from diffusion.bench.memory import MIB, TRAINER_OWNERS, rows_markdown, tensor_bytes
from diffusion.bench.memory_rows import PAPER
from diffusion.registry import MODELS
from tests.commands import load_command

main = load_command("tools/benchmark_memory.py").main

REPO = Path(__file__).resolve().parents[2]
CONFIG = "configs/lcm/tiny_lcm.py"
SHRINK = ["model.depth=2", "model.hidden_size=64", "train.batch_size=2", "train.mixed_precision=no"]


@pytest.mark.parametrize("row", ["lcm-bf16", "teacher-fp16", "controlnet-bf16", "infer-int8-lean"])
def test_memory_row_tiny(row):
    r = main(["--child", row, "--size", "tiny", "--device", "cpu"])
    assert r["weights"] > 0 and r["peak"] > 0
    if row != "infer-int8-lean":
        # AdamW: two fp32 moments per fp32 gradient (plus a scalar step count per parameter)
        assert r["grads"] > 0 and abs(r["optimizer"] - 2 * r["grads"]) < 0.01 * r["grads"]
        assert r["loss"] == r["loss"]  # finite, not NaN


def test_memory_driver_reports_skipped_rows(tmp_path):
    args = ["--size", "tiny", "--device", "cpu", "--rows", "controlnet-bf16", "--row-timeout", "0.5"]
    result = main([*args, "--json", str(tmp_path / "m.json")])  # a child cannot even import torch in 0.5 s
    assert "ran past" in result["rows"]["controlnet-bf16"]["error"]
    assert "skipped" in rows_markdown(result, PAPER) and (tmp_path / "m.json").is_file()


def test_trainer_options_need_a_trainer():
    with pytest.raises(SystemExit):
        main(["--steps", "2"])


@pytest.fixture(scope="module")
def root(tmp_path_factory) -> Path:
    """One folder for both trainer runs: the embedded default (8 images) and the tiny T5 are built once."""
    return tmp_path_factory.mktemp("memory")


def trainer_args(root: Path, name: str, *options: str) -> list[str]:
    run = ["--trainer", CONFIG, "--random-teacher", "--steps", "1", "--embedded-num", "8"]
    run += ["--work-dir", str(root / name), "--json", str(root / f"{name}.json")]
    return [*run, "--cfg-options", f"text_encoder.path={root / 't5'}", *SHRINK, *options]


def student_bytes() -> tuple[float, float]:
    """MiB of the shrunken student's parameters and of its buffers."""
    model_cfg = Config.fromfile(REPO / CONFIG).model
    model = MODELS.build(dict(model_cfg, depth=2, hidden_size=64))
    return tensor_bytes(model.parameters()) / MIB, tensor_bytes(model.buffers()) / MIB


def test_trainer_run_one_process(root):
    result = main(trainer_args(root, "one", "train.ema_rate=0.9"))  # with the final validation grid
    assert json.loads((root / "one.json").read_text()) == result
    (r,) = result["ranks"]
    held, (params, buffers) = r["tensors_mib"], student_bytes()
    assert held["total"] == pytest.approx(sum(held[k] for k in TRAINER_OWNERS))
    assert held["trained"] == pytest.approx(params + buffers)
    assert held["frozen"] == pytest.approx(2 * held["trained"])  # teacher and target, fp32 like the student
    assert held["ema"] == pytest.approx(held["trained"])  # fp32 shadow of parameters and buffers
    assert held["optimizer"] == pytest.approx(2 * params, rel=1e-3)  # two moments, plus a step count each
    assert held["validation"] == 0  # prompts encoded once, the text encoder freed; no second network
    assert r["peak_rss_mib"] > r["peak_above_start_mib"] > 0 and r["cuda_peak_mib"] is None


def test_trainer_run_fsdp_two_ranks_hold_half(root):
    args = trainer_args(root, "fsdp", "train.parallel=fsdp", "train.ema_rate=0.9")  # validation grids included
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    env.update(OMP_NUM_THREADS="1", CUDA_VISIBLE_DEVICES="", HF_HUB_OFFLINE="1", WANDB_MODE="disabled")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
    cmd += ["tools/benchmark_memory.py", *args]
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-3000:]
    ranks = json.loads((root / "fsdp.json").read_text())["ranks"]
    assert [(r["rank"], r["world"], r["parallel"]) for r in ranks] == [(0, 2, "fsdp"), (1, 2, "fsdp")]
    params, buffers = student_bytes()
    for r in ranks:
        held = r["tensors_mib"]
        assert held["trained"] == pytest.approx(params / 2 + buffers, rel=0.02)  # buffers are not sharded
        assert held["frozen"] == pytest.approx(2 * held["trained"], rel=0.02)  # teacher and target sharded too
        assert held["optimizer"] == pytest.approx(params, rel=0.02)  # moments of this rank's shards only
    assert "| 1 / 2 (fsdp) |" in proc.stdout


def test_reproduce_tables_rebuilds_table_1_and_2_without_a_gpu():
    import argparse

    from diffusion.experiments.tables import default_jobs

    args = argparse.Namespace(student=None, num_images=8, sweep=False, controlnet_steps=2, controlnet_images=2)
    jobs = {job.name: job for job in default_jobs(args)}
    assert (jobs["memory_simulated"].tool, jobs["memory_simulated"].args) == (
        "tools/benchmark_memory.py",
        ["--simulate"],
    )
    assert (jobs["roofline"].tool, jobs["roofline"].args) == ("tools/benchmark_speed.py", ["--roofline"])
