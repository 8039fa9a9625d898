"""Distributed setup for the trainer (PixArt-δ §3.3 trains on several GPUs with data parallelism).

Initialises from the environment that ``torchrun`` sets (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR, MASTER_PORT), so
single-node and multi-node (``--nnodes``) launches work unchanged. Without those variables everything falls back to a
single process and the collective helpers become no-ops, which keeps tests and debugging free of launchers.

A group that ``torchrun --max-restarts N`` restarts must not meet the keys of the attempt it replaces: torchrun's
agent serves the workers' store itself (``TORCHELASTIC_USE_AGENT_STORE``) and keeps that one server, with everything
the dead attempt wrote in it, across restarts (pytorch/pytorch#135712). A restarted rank that asks for a peer's gloo
address (NCCL: the unique id) before that peer has rewritten it gets the dead process's, and the group hangs in
``init_process_group`` or fails with "Connection refused"; on an idle machine the ranks usually start close enough
together for the race to go unseen. :func:`attempt_store` gives each attempt keys of its own.
"""

import os
import warnings
from datetime import timedelta

import torch
import torch.distributed as torch_dist

ENV_KEYS = ("RANK", "WORLD_SIZE", "LOCAL_RANK")


def is_initialized() -> bool:
    """True when a process group is running."""
    return torch_dist.is_available() and torch_dist.is_initialized()


def init(timeout_minutes: int = 30) -> torch.device:
    """Join the process group described by the torchrun environment (idempotent) and pick this process's device.

    NCCL is used on CUDA, gloo on CPU. Returns ``cuda:LOCAL_RANK`` when CUDA is available, else ``cpu``.
    """
    use_cuda = torch.cuda.is_available()
    device = torch.device("cuda", local_rank()) if use_cuda else torch.device("cpu")
    if use_cuda:
        torch.cuda.set_device(device)
    launched = all(key in os.environ for key in ENV_KEYS)
    if launched and not is_initialized():
        timeout = timedelta(minutes=timeout_minutes)
        store, global_rank, world = next(torch_dist.rendezvous("env://", timeout=timeout))
        store.set_timeout(timeout)
        torch_dist.init_process_group(
            backend="nccl" if use_cuda else "gloo",
            store=attempt_store(store),
            rank=global_rank,
            world_size=world,
            timeout=timeout,
            device_id=device if use_cuda else None,
        )
    return device


def attempt_store(store: torch_dist.Store) -> torch_dist.Store:
    """``store`` (the ``env://`` rendezvous store) with its keys scoped to this torchrun attempt.

    Scoped where torchrun's agent keeps one store for every attempt and all ranks are this node's
    (``LOCAL_WORLD_SIZE == WORLD_SIZE``): one agent counts the restarts (``TORCHELASTIC_RESTART_COUNT``), so every
    rank of an attempt agrees on its number. Over several nodes the agents count apart (a healthy node restarted
    because another failed does not count), so the number cannot name the attempt there; a warning asks for
    ``TORCH_DISABLE_SHARE_RDZV_TCP_STORE=1`` on every node's torchrun when it may restart (a store per attempt).
    """
    if os.environ.get("TORCHELASTIC_USE_AGENT_STORE") != str(True):  # env:// made a store of this attempt's
        return torch_dist.PrefixStore("default_pg", store)
    if os.environ.get("LOCAL_WORLD_SIZE") == os.environ["WORLD_SIZE"]:
        attempt = os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")
        return torch_dist.PrefixStore(f"default_pg/attempt_{attempt}", store)
    if int(os.environ.get("TORCHELASTIC_MAX_RESTARTS", "0")) > 0:
        warnings.warn(
            "torchrun keeps one store across restarts (pytorch/pytorch#135712): a restarted multi-node group can read "
            "the previous attempt's keys and hang in init_process_group; launch torchrun with "
            "TORCH_DISABLE_SHARE_RDZV_TCP_STORE=1 on every node",
            stacklevel=2,
        )
    return torch_dist.PrefixStore("default_pg", store)


def rank() -> int:
    """Global rank of this process (0 without a process group)."""
    return torch_dist.get_rank() if is_initialized() else 0


def world_size() -> int:
    """Number of processes (1 without a process group)."""
    return torch_dist.get_world_size() if is_initialized() else 1


def local_rank() -> int:
    """Rank within this node, as set by torchrun (0 when absent)."""
    return int(os.environ.get("LOCAL_RANK", 0))


def is_main() -> bool:
    """True on the process that logs, samples and writes shared files."""
    return rank() == 0


def barrier() -> None:
    """Wait for every process (no-op in a single process)."""
    if is_initialized():
        torch_dist.barrier()


def all_reduce_mean(tensor: torch.Tensor) -> torch.Tensor:
    """Mean of ``tensor`` over all processes (returns a new tensor; the input is left untouched)."""
    out = tensor.detach().clone()
    if is_initialized():
        torch_dist.all_reduce(out, op=torch_dist.ReduceOp.SUM)
        out /= world_size()
    return out


def cleanup() -> None:
    """Leave the process group if one is running."""
    if is_initialized():
        torch_dist.destroy_process_group()


def native_bf16(device: torch.device | str = "cpu") -> bool:
    """Whether ``device`` computes bfloat16 in hardware: a CUDA device that supports it, or a CPU with AVX512-BF16 or
    AMX (read from /proc/cpuinfo on Linux) that torch and oneDNN may use (``ATEN_CPU_CAPABILITY`` /
    ``ONEDNN_MAX_CPU_ISA`` can hold them to AVX2, which is how an AVX2-only CPU is reproduced on a newer one).
    Elsewhere bf16 autocast is emulated: one forward+backward of the embedded default's model at batch 16 took 29.5 s
    in bf16 against 1.2 s in fp32 on a 2-core AVX2 AMD EPYC."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    if device.type != "cpu" or torch.backends.cpu.get_cpu_capability() != "AVX512":
        return False
    isa = os.environ.get("ONEDNN_MAX_CPU_ISA", "ALL").upper()
    if isa != "ALL" and "BF16" not in isa and "AMX" not in isa:
        return False
    try:
        flags = {f for line in open("/proc/cpuinfo") if line.startswith("flags") for f in line.split()[2:]}
    except OSError:
        return False
    return bool(flags & {"avx512_bf16", "amx_bf16"})


def portable_precision(cfg) -> str | None:
    """For tools that train the embedded default on whatever machine runs them (``make demo``, the ControlNet
    ablation): a config asking for bf16 autocast on a CPU without native bf16 is switched to fp32 in place, and the
    note to print is returned (None when nothing changed). Configs themselves, and the trainer, never switch."""
    if cfg["train"].get("mixed_precision") != "bf16" or torch.cuda.is_available() or native_bf16("cpu"):
        return None
    cfg.merge_from_dict({"train.mixed_precision": "no"})
    return (
        "this CPU has no native bf16 (no AVX512-BF16 / AMX), where bf16 autocast is ~10-25x slower than fp32: "
        "training in fp32 instead (train.mixed_precision='no'); the README's numbers were measured with bf16"
    )
