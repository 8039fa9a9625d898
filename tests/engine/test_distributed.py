"""Two gloo processes under torchrun train exactly like one process with the same global batch.

DDP averages gradients over ranks and the one-process run averages over accumulation micro-steps, so with a
deterministic method and data, 2 ranks x batch 2 == 1 process x batch 2 x grad_accum 2 (the distributed sampler deals
the same 4 shuffled items to one optimizer step in both runs).
"""

import json
import os
import socket
import subprocess
import sys
import warnings
from pathlib import Path

import psutil
import pytest
import torch
import torch.distributed as torch_dist
from mmengine.config import Config

from diffusion.engine import Trainer, dist
from diffusion.engine import checkpoint as ckpt
from tests.engine.standins import tiny_config

REPO = Path(__file__).resolve().parents[2]
ENTRY = ["-m", "tests.engine.train_entry"]  # run in the checkout (cwd=REPO): see train_entry.py
STEPS = 3


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _config(**train) -> dict:
    return tiny_config(
        method=dict(type="EngineMSELoss", noise=False),
        data=dict(type="EngineMemDataset", size=8, std=0),
        train=dict(max_steps=100, **train),
        checkpoint=dict(every=100),
    )


def _losses(work_dir: Path) -> list[float]:
    return [json.loads(line)["loss"] for line in (work_dir / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.parametrize("parallel", ["ddp", pytest.param("fsdp", marks=pytest.mark.slow)])
def test_two_processes_match_one(tmp_path, parallel):
    cfg_path = tmp_path / "tiny.py"
    Config(_config(batch_size=2, grad_accum=1, parallel=parallel)).dump(str(cfg_path))
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    env.update(HF_HUB_OFFLINE="1", WANDB_MODE="disabled", OMP_NUM_THREADS="1", CUDA_VISIBLE_DEVICES="")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(_free_port())]
    cmd += [
        *ENTRY,
        str(cfg_path),
        "--work-dir",
        str(tmp_path / "ddp"),
        "--cfg-options",
        f"train.max_steps={STEPS}",
    ]
    result = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-3000:]

    single_cfg = _config(batch_size=2, grad_accum=2)
    single_cfg["train"]["max_steps"] = STEPS
    Trainer(single_cfg, tmp_path / "single").train()

    multi_dir = ckpt.step_dir(tmp_path / "ddp" / ckpt.CHECKPOINT_SUBDIR, STEPS)
    single_dir = ckpt.step_dir(tmp_path / "single" / ckpt.CHECKPOINT_SUBDIR, STEPS)
    assert (multi_dir / "rng_rank0.pt").is_file() and (multi_dir / "rng_rank1.pt").is_file()
    for name in ("model", "ema"):
        multi = ckpt.load_tensors(multi_dir / f"{name}.safetensors")
        single = ckpt.load_tensors(single_dir / f"{name}.safetensors")
        assert multi.keys() == single.keys()
        for key in multi:
            torch.testing.assert_close(multi[key], single[key], rtol=0, atol=1e-6, msg=f"{name}.{key}")
    assert _losses(tmp_path / "ddp") == pytest.approx(_losses(tmp_path / "single"), abs=1e-6)
    assert torch.load(multi_dir / "training_state.pt", weights_only=True)["world_size"] == 2


def test_portable_precision_switches_only_emulated_cpu_bf16(monkeypatch):
    """make demo / the ablation on a CPU without native bf16 train in fp32 and say so; elsewhere nothing changes."""
    from mmengine.config import Config

    from diffusion.engine import dist

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    for native, want in ((False, "no"), (True, "bf16")):
        monkeypatch.setattr(dist, "native_bf16", lambda device="cpu", native=native: native)
        cfg = Config(dict(train=dict(mixed_precision="bf16")))
        note = dist.portable_precision(cfg)
        assert cfg.train.mixed_precision == want and (note is None) == native
        assert native or "no native bf16" in note
    fp32 = Config(dict(train=dict(mixed_precision="no")))
    assert dist.portable_precision(fp32) is None and fp32.train.mixed_precision == "no"
    assert isinstance(dist.native_bf16("cpu"), bool)


def _run_bounded(cmd: list[str], env: dict, timeout: float) -> tuple[int | None, str]:
    """Run ``cmd``; past ``timeout`` kill it and every process below it (torchrun's workers have sessions of their
    own) and return ``(None, output)``."""
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        out, _ = proc.communicate(timeout=timeout)
        return proc.returncode, out
    except subprocess.TimeoutExpired:
        for child in psutil.Process(proc.pid).children(recursive=True) + [psutil.Process(proc.pid)]:
            child.kill()
        return None, proc.communicate()[0]


@pytest.mark.slow  # 29 s on the 2 cores at a load of 2, 40-45 s at a load of 4
def test_restarted_group_does_not_meet_the_dead_attempts_keys():
    # torchrun's agent keeps one store across --max-restarts restarts, with the dead attempt's gloo addresses in it:
    # a restarted rank 0 that looked up rank 1 before the slow rank 1 rewrote its key connected to a dead port
    # ("Connection refused", exit 1) or both ranks waited for each other (a hang), until dist.init scoped the keys
    # to the attempt
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    env.update(OMP_NUM_THREADS="1", CUDA_VISIBLE_DEVICES="", RESTART_ENTRY_SLOW_START="3")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--max-restarts", "1"]
    cmd += ["--standalone", "--monitor-interval", "0.1", str(Path(__file__).resolve().parent / "restart_entry.py")]
    rc, out = _run_bounded(cmd, env, timeout=90)
    assert rc is not None, f"the restarted group hung (killed after 90 s):\n{out[-3000:]}"
    assert rc == 0, out[-3000:]
    assert "attempt 1 rank 0: all-reduce 2" in out and "attempt 1 rank 1: all-reduce 2" in out, out[-3000:]


def test_attempt_store_scopes_keys_to_the_torchrun_attempt(monkeypatch):
    # the agent's one store, as a restarted group finds it: the dead attempt's keys are still there
    store = torch_dist.HashStore()
    for key, value in dict(TORCHELASTIC_USE_AGENT_STORE="True", LOCAL_WORLD_SIZE="2", WORLD_SIZE="2").items():
        monkeypatch.setenv(key, value)
    monkeypatch.setenv("TORCHELASTIC_RESTART_COUNT", "0")
    dist.attempt_store(store).set("1", "the address of rank 1 of attempt 0")
    assert dist.attempt_store(store).check(["1"])
    monkeypatch.setenv("TORCHELASTIC_RESTART_COUNT", "1")
    assert not dist.attempt_store(store).check(["1"])


def test_attempt_store_warns_over_several_nodes(monkeypatch):
    for key, value in dict(
        TORCHELASTIC_USE_AGENT_STORE="True", LOCAL_WORLD_SIZE="8", WORLD_SIZE="16", TORCHELASTIC_MAX_RESTARTS="3"
    ).items():
        monkeypatch.setenv(key, value)
    with pytest.warns(UserWarning, match="TORCH_DISABLE_SHARE_RDZV_TCP_STORE=1"):
        dist.attempt_store(torch_dist.HashStore())
    monkeypatch.setenv("TORCHELASTIC_USE_AGENT_STORE", "False")  # torchrun with a store per attempt: nothing to say
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        dist.attempt_store(torch_dist.HashStore())


def test_native_bf16_follows_the_isa_torch_and_onednn_may_use(monkeypatch):
    """A CPU held to AVX2 (ATEN_CPU_CAPABILITY / ONEDNN_MAX_CPU_ISA) emulates bf16 even with AVX512-BF16 flags."""
    from diffusion.engine import dist

    monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: "AVX2")
    assert dist.native_bf16("cpu") is False
    monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: "AVX512")
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "AVX2")
    assert dist.native_bf16("cpu") is False
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "AVX512_CORE_AMX")
    with open("/proc/cpuinfo") as f:
        flags = {w for line in f if line.startswith("flags") for w in line.split()[2:]}
    assert dist.native_bf16("cpu") is bool(flags & {"avx512_bf16", "amx_bf16"})
