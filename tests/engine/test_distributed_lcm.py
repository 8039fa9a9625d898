"""The real LCMDistillation (PixArt-delta Algorithm 1) under 2 gloo ranks: FSDP2 shards the student, the frozen
teacher and the EMA target on one mesh and trains like DDP; checkpoints do not depend on the world size or the
parallel mode (a 2-rank FSDP checkpoint resumes on 1 rank exactly like a 2-rank DDP one); a DDP run killed after a
checkpoint resumes with ``--resume auto`` to the same losses and target network as the uninterrupted run."""

import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from mmengine.config import Config
from safetensors.torch import save_file

from diffusion.engine import Trainer
from diffusion.engine import checkpoint as ckpt
from diffusion.registry import MODELS
from tests.engine.standins import LATENT_CHANNELS, LATENT_SIZE, TEXT_CHANNELS, TEXT_LEN, tiny_config
from tests.model.helpers import randomize

REPO = Path(__file__).resolve().parents[2]
ENTRY = ["-m", "tests.engine.train_entry"]  # run in the checkout (cwd=REPO): see train_entry.py
MODEL = dict(
    type="PixArt_tiny",
    input_size=LATENT_SIZE,
    patch_size=2,
    in_channels=LATENT_CHANNELS,
    hidden_size=24,
    depth=2,
    num_heads=2,
    caption_channels=TEXT_CHANNELS,
    model_max_length=TEXT_LEN,
    class_dropout_prob=0.0,
)


def _config(tmp_path: Path, validation: bool = True, **train) -> dict:
    """Validation grids (the EMA swapped into the sharded network, every rank sampling) at steps 2 and 4."""
    teacher = tmp_path / "teacher.safetensors"
    if not teacher.is_file():
        model = randomize(MODELS.build(dict(MODEL)), std=0.05, seed=5)
        save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(teacher))
    return tiny_config(
        model=dict(MODEL),
        weights=dict(teacher=str(teacher)),
        method=dict(type="LCMDistillation", ema_decay=0.5),  # a fast target, so its restoration matters
        data=dict(type="EngineMemDataset", size=8),
        optimizer=dict(type="AdamW", lr=1e-3, weight_decay=0.0),
        lr_schedule=dict(type="constant", warmup_steps=0),
        train=dict(max_steps=4, batch_size=2, ema_rate=0.9, seed=3, num_workers=0, **train),
        checkpoint=dict(every=2, keep_last=5),
        validation=dict(every=2, prompts=["a", "b"]) if validation else None,
    )


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _torchrun(
    cfg: dict, work_dir: Path, *extra: str, crash_after: int | None = None, real_pipeline: bool = False
) -> subprocess.CompletedProcess:
    """2 gloo ranks of ``train_entry.py``; validation grids from a one-forward stand-in unless ``real_pipeline``."""
    cfg_path = work_dir.parent / f"{work_dir.name}.py"
    Config(cfg).dump(str(cfg_path))
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    env.update(HF_HUB_OFFLINE="1", WANDB_MODE="disabled", OMP_NUM_THREADS="1", CUDA_VISIBLE_DEVICES="")
    if not real_pipeline:
        env.update(TRAIN_ENTRY_FORWARD_PIPELINE="1")
    if crash_after is not None:
        env["TRAIN_ENTRY_CRASH_AFTER_STEP"] = str(crash_after)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(_free_port())]
    cmd += [*ENTRY, str(cfg_path), "--work-dir", str(work_dir), *extra]
    return subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=240)


def _losses(work_dir: Path) -> dict[int, float]:
    lines = [json.loads(line) for line in (work_dir / "metrics.jsonl").read_text().splitlines()]
    return {m["step"]: m["loss"] for m in lines}


def _tensors(step_dir: Path) -> dict[str, torch.Tensor]:
    return {
        f"{n}.{k}": v
        for n in ("model", "ema", "method")
        for k, v in ckpt.load_tensors(step_dir / f"{n}.safetensors").items()
    }


def _assert_close(a: dict, b: dict, atol: float) -> None:
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=atol, msg=key)


def _step_dir(work_dir: Path, step: int) -> Path:
    return ckpt.step_dir(work_dir / ckpt.CHECKPOINT_SUBDIR, step)


def _resume_on_one_rank(tmp_path: Path, run: str, new_run: str) -> Trainer:
    """A 1-process trainer (same global batch) resumed from the step-2 checkpoint of the 2-rank run ``run``."""
    shutil.copytree(_step_dir(tmp_path / run, 2), _step_dir(tmp_path / new_run, 2))
    return Trainer(_config(tmp_path, validation=False, grad_accum=2), tmp_path / new_run, resume="auto")


def test_fsdp_lcm_checkpoint_resumes_on_one_rank(tmp_path):
    """FSDP shards all three networks, trains, checkpoints whole tensors; one process resumes and continues."""
    result = _torchrun(_config(tmp_path, parallel="fsdp"), tmp_path / "fsdp")
    assert result.returncode == 0, result.stderr[-3000:]
    assert sorted(p.name for p in (tmp_path / "fsdp" / "samples").iterdir()) == [
        "step_0000002.png",
        "step_0000004.png",
    ]
    saved = _tensors(_step_dir(tmp_path / "fsdp", 2))
    assert any(k.startswith("method.target.") for k in saved)
    for key, value in saved.items():
        assert torch.isfinite(value).all(), key
    # one process, same global batch, from the 2-rank step-2 checkpoint
    one = _resume_on_one_rank(tmp_path, "fsdp", "one")
    _assert_close(
        {f"method.target.{k}": v for k, v in one.method.target.state_dict().items()},
        {k: v for k, v in saved.items() if k.startswith("method.target.")},
        atol=0,
    )
    one.train()
    assert one.step == 4 and sorted(_losses(tmp_path / "one")) == [3, 4]


@pytest.mark.slow
def test_fsdp_matches_ddp_and_killed_ddp_resumes_exactly(tmp_path):
    for name, parallel in (("ddp", "ddp"), ("fsdp", "fsdp")):
        result = _torchrun(_config(tmp_path, parallel=parallel), tmp_path / name)
        assert result.returncode == 0, result.stderr[-3000:]
    ddp, fsdp = _losses(tmp_path / "ddp"), _losses(tmp_path / "fsdp")
    assert sorted(ddp) == [1, 2, 3, 4]
    assert list(fsdp.values()) == pytest.approx(list(ddp.values()), rel=1e-4, abs=1e-6)
    for step in (2, 4):  # same weights, EMA and target whatever the parallel mode
        _assert_close(_tensors(_step_dir(tmp_path / "fsdp", step)), _tensors(_step_dir(tmp_path / "ddp", step)), 1e-5)

    # world-size independence: 1 process resumed from either step-2 checkpoint continues identically
    for name in ("ddp", "fsdp"):
        _resume_on_one_rank(tmp_path, name, f"one_{name}").train()
    _assert_close(_tensors(_step_dir(tmp_path / "one_fsdp", 4)), _tensors(_step_dir(tmp_path / "one_ddp", 4)), 1e-5)
    assert list(_losses(tmp_path / "one_fsdp").values()) == pytest.approx(
        list(_losses(tmp_path / "one_ddp").values()), rel=1e-4
    )

    # DDP killed right after its step-2 checkpoint, then --resume auto: the target comes back from the checkpoint
    killed = _torchrun(_config(tmp_path, parallel="ddp"), tmp_path / "killed", crash_after=2)
    assert killed.returncode != 0 and sorted(_losses(tmp_path / "killed")) == [1, 2]
    resumed = _torchrun(_config(tmp_path, parallel="ddp"), tmp_path / "killed", "--resume", "auto")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert _losses(tmp_path / "killed") == ddp
    _assert_close(_tensors(_step_dir(tmp_path / "killed", 4)), _tensors(_step_dir(tmp_path / "ddp", 4)), atol=0)
