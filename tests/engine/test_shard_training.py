"""Training from shards through the trainer (issue 19 items 4, 5): configs/pixart/tiny_teacher_shards.py (shrunk) on
shards of a small embedded default, with loader workers and on-the-fly encoding. A run stopped and resumed sees the
same samples in the same order as an uninterrupted one, so its losses and weights equal the uninterrupted run's: in
one process with 2 workers, and (slow) 2 gloo ranks x 2 workers killed after a checkpoint and resumed. Resuming with
another layout is refused naming the config keys, or goes on from the next epoch with data.on_layout_change."""

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from mmengine.config import Config

from diffusion.data.embedded import make_embedded_data
from diffusion.data.shards import make_shards
from diffusion.data.text_encoder import make_tiny_text_encoder
from diffusion.engine import Trainer
from diffusion.engine import checkpoint as ckpt
from diffusion.paths import repo_path

REPO = Path(__file__).resolve().parents[2]
N, PER_SHARD = 40, 5  # 8 shards: 2 whole shards per reader with 2 ranks x 2 workers


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    root = tmp_path_factory.mktemp("shard_training")
    make_embedded_data(root / "data", num=N, seed=0)
    make_tiny_text_encoder(root / "t5")
    make_shards(root / "data", root / "shards", per_shard=PER_SHARD, progress=False)
    return root


def _config(root: Path, **options) -> Config:
    """The committed shard config, shrunk: 4 x 4 batches a rank-epoch over 2 workers, checkpoints every 3 steps."""
    cfg = Config.fromfile(str(repo_path("configs/pixart/tiny_teacher_shards.py")))
    cfg.merge_from_dict({
        "model.hidden_size": 32, "model.depth": 1, "model.num_heads": 2,
        "data.urls": str(root / "shards" / "{00000..00007}.tar"), "data.shuffle_buffer": 8,
        "text_encoder.path": str(root / "t5"),
        "train.max_steps": 12, "train.batch_size": 4, "train.mixed_precision": "no", "train.num_workers": 2,
        "train.ema_rate": 0.9, "checkpoint.every": 3, "checkpoint.keep_last": 0, "log.every": 1, **options,
    })  # fmt: skip
    cfg = cfg.to_dict()
    cfg.pop("validation")
    return Config(cfg)


def _metrics(work: Path) -> list[dict]:
    return [json.loads(line) for line in (work / "metrics.jsonl").read_text().splitlines()]


def _same_weights(a: Path, b: Path, step: int) -> bool:
    for name in ("model", "ema"):
        x = ckpt.load_tensors(ckpt.step_dir(a / "checkpoints", step) / f"{name}.safetensors")
        y = ckpt.load_tensors(ckpt.step_dir(b / "checkpoints", step) / f"{name}.safetensors")
        if x.keys() != y.keys() or not all(torch.equal(x[k], y[k]) for k in x):
            return False
    return True


def test_a_resumed_shard_run_equals_the_uninterrupted_one(shards, tmp_path):
    """One process, 2 loader workers: 10 batches an epoch, so step 3 resumes mid-epoch and the run crosses into
    epoch 1; every logged value after the resume and the final weights equal the uninterrupted run's."""
    cfg = _config(shards)
    assert Trainer(cfg, tmp_path / "full").train()
    Trainer(cfg, tmp_path / "resumed", resume=str(tmp_path / "full" / "checkpoints" / "step_0000003")).train()
    full, resumed = _metrics(tmp_path / "full"), _metrics(tmp_path / "resumed")
    assert [m["step"] for m in resumed] == list(range(4, 13))
    for key in ("loss", "mse", "vb", "grad_norm", "lr"):
        assert [m[key] for m in resumed] == [m[key] for m in full[3:]], key
    assert _same_weights(tmp_path / "full", tmp_path / "resumed", 12)
    log = (tmp_path / "full" / "train.log").read_text()
    assert "on-the-fly encoding: PixelCodec (scale 10) and T5" in log and "8 shard(s) over 1 rank(s) x 2" in log
    assert "epoch 0 on rank 0: 10 batches of 4" in log  # the epoch line, as epoch 1 starts


def test_resuming_with_another_layout_is_refused_naming_the_keys(shards, tmp_path):
    cfg = _config(shards, **{"train.max_steps": 3})
    Trainer(cfg, tmp_path / "run").train()
    step3 = str(tmp_path / "run" / "checkpoints" / "step_0000003")
    other = _config(shards, **{"train.num_workers": 0, "train.max_steps": 5})
    with pytest.raises(ValueError, match=r"(?s)step_0000003.*readers: saved 2, now 1.*train\.num_workers giving 2 "
                                         r".*data\.on_layout_change=next_epoch"):  # fmt: skip
        Trainer(other, tmp_path / "other", resume=step3)
    assert not (tmp_path / "other").exists()  # a run that fails to start leaves no work dir
    on = _config(shards, **{"train.num_workers": 0, "train.max_steps": 5, "data.on_layout_change": "next_epoch"})
    trainer = Trainer(on, tmp_path / "next", resume=step3)
    assert trainer.data.stream.epoch == 1 and trainer.train()
    log = (tmp_path / "next" / "train.log").read_text()
    assert "another layout (readers: saved 2, now 1): starting epoch 1" in log


def _torchrun(cfg_path: Path, work: Path, env: dict, resume: bool = False) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--standalone"]
    cmd += ["-m", "tests.engine.train_entry", str(cfg_path), "--work-dir", str(work)]
    cmd += ["--resume", "auto"] if resume else []
    return subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)


@pytest.mark.slow  # three 2-rank launches: 100-150 s on the 2 shared cores
def test_two_ranks_two_workers_killed_and_resumed_equal_the_uninterrupted_run(shards, tmp_path):
    """2 gloo ranks x 2 loader workers (each reader 2 whole shards: 2 batches of 4 and 2 samples dropped, so 4
    batches a rank-epoch): every rank killed (os._exit) right after the step-6 checkpoint, mid-epoch 1; ``--resume
    auto`` then trains to step 12 with the losses and weights of the uninterrupted 2-rank run. Resuming it in one
    process is refused naming the options."""
    cfg_path = tmp_path / "shards.py"
    _config(shards).dump(str(cfg_path))
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    env.update(HF_HUB_OFFLINE="1", WANDB_MODE="disabled", OMP_NUM_THREADS="1", CUDA_VISIBLE_DEVICES="")
    full = _torchrun(cfg_path, tmp_path / "full", env)
    assert full.returncode == 0, full.stderr[-3000:]
    killed = _torchrun(cfg_path, tmp_path / "killed", {**env, "TRAIN_ENTRY_CRASH_AFTER_STEP": "6"})
    assert killed.returncode != 0 and len(_metrics(tmp_path / "killed")) == 6
    resumed = _torchrun(cfg_path, tmp_path / "killed", env, resume=True)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert [m["loss"] for m in _metrics(tmp_path / "killed")] == [m["loss"] for m in _metrics(tmp_path / "full")]
    assert _same_weights(tmp_path / "full", tmp_path / "killed", 12)
    log = (tmp_path / "killed" / "train.log").read_text()
    assert "resumed from" in log and "step_0000006" in log
    with pytest.raises(ValueError, match=r"(?s)world_size: saved 2, now 1.*launch 2 rank\(s\)"):
        Trainer(_config(shards, **{"train.max_steps": 14}), tmp_path / "killed", resume="auto")


@pytest.mark.slow  # two 2-rank launches: ~60 s on the 2 shared cores
def test_fsdp_shards_the_text_encoder_and_trains_as_ddp(shards, tmp_path):
    """Under train.parallel=fsdp the on-the-fly T5 is sharded on the model's mesh (said in train.log), and the run's
    losses equal the DDP run's (the same captions come out of the sharded encoder)."""
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    env.update(HF_HUB_OFFLINE="1", WANDB_MODE="disabled", OMP_NUM_THREADS="1", CUDA_VISIBLE_DEVICES="")
    losses = {}
    for parallel in ("ddp", "fsdp"):
        cfg_path = tmp_path / f"{parallel}.py"
        _config(shards, **{"train.parallel": parallel, "train.max_steps": 4}).dump(str(cfg_path))
        result = _torchrun(cfg_path, tmp_path / parallel, env)
        assert result.returncode == 0, result.stderr[-3000:]
        losses[parallel] = [m["loss"] for m in _metrics(tmp_path / parallel)]
    assert losses["fsdp"] == pytest.approx(losses["ddp"], rel=1e-5)
    assert "(sharded on the FSDP mesh)" in (tmp_path / "fsdp" / "train.log").read_text()
    assert "(sharded on the FSDP mesh)" not in (tmp_path / "ddp" / "train.log").read_text()


def _run_in_own_session(cfg_path: Path, work: Path, env: dict) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "tests.engine.train_entry", str(cfg_path), "--work-dir", str(work)]
    return subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)  # fmt: skip


@pytest.mark.parametrize("data", ["shards", "features"])
def test_sigterm_to_the_process_group_stops_gracefully_with_loader_workers(shards, tmp_path, data):
    """torchrun (``os.killpg`` on each rank), ``scancel`` and Ctrl-C signal the whole process group, DataLoader workers
    included. The workers must leave the signal to the main process, which saves the step it stops at and exits 0;
    the resumed run equals the uninterrupted one."""
    import time

    from tests.engine.standins import tiny_config

    if data == "shards":
        cfg = _config(shards, **{"train.max_steps": 60, "checkpoint.every": 1000})
    else:
        cfg = Config(
            tiny_config(data=dict(size=64), train=dict(max_steps=60, num_workers=2), checkpoint=dict(every=1000))
        )
    cfg_path = tmp_path / "cfg.py"
    cfg.dump(str(cfg_path))
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    env.update(HF_HUB_OFFLINE="1", WANDB_MODE="disabled", OMP_NUM_THREADS="1", CUDA_VISIBLE_DEVICES="")
    proc = _run_in_own_session(cfg_path, tmp_path / "stopped", env)
    metrics, deadline = tmp_path / "stopped" / "metrics.jsonl", time.time() + 120
    while proc.poll() is None and time.time() < deadline:
        if metrics.is_file() and len(metrics.read_text().splitlines()) >= 3:
            break
        time.sleep(0.02)
    os.killpg(proc.pid, signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err[-3000:]
    stopped = len(_metrics(tmp_path / "stopped"))
    assert stopped < 60 and "stopped by SIGTERM" in (tmp_path / "stopped" / "train.log").read_text()
    assert (tmp_path / "stopped" / "checkpoints" / f"step_{stopped:07d}").is_dir()
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as the stopped run's process (OMP_NUM_THREADS=1): the same float reductions
    try:
        Trainer(cfg, tmp_path / "stopped", resume="auto").train()
        Trainer(cfg, tmp_path / "full").train()
    finally:
        torch.set_num_threads(threads)
    assert [m["loss"] for m in _metrics(tmp_path / "stopped")] == [m["loss"] for m in _metrics(tmp_path / "full")]
