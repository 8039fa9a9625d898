"""Data-parallel wrapping for the trainer: DDP (the PixArt-δ §3.3 setup of 2 V100s) or FSDP2 for large models.

FSDP shards each transformer block the model lists in ``fsdp_wrap_modules`` (else its ``blocks``), then the root.
"""

from collections.abc import Sequence
from contextlib import contextmanager, nullcontext

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from diffusion.dtensor import full_tensor as full_tensor  # re-exported: parallel.full_tensor / local_tensor
from diffusion.dtensor import is_dtensor
from diffusion.dtensor import local_tensor as local_tensor
from diffusion.engine import dist
from diffusion.protocols import CaptionEncoder, CaptionKVBlock, FSDPUnits


def wrap(model: nn.Module, parallel: str, device: torch.device, frozen: Sequence[nn.Module] = ()) -> nn.Module:
    """Return the module the training step calls: ``model`` itself in one process, else DDP / FSDP2 around it.

    ``frozen``: networks the method runs without gradients (the LCM teacher and target). Under FSDP they are sharded
    on the same mesh, block by block like the model, so no rank holds a full copy of any of the three networks; under
    DDP each rank keeps its own full copy (nothing to synchronise).
    """
    if dist.world_size() == 1:
        return model
    if parallel == "ddp":
        device_ids = [device.index] if device.type == "cuda" else None
        return DistributedDataParallel(model, device_ids=device_ids, find_unused_parameters=False)
    from torch.distributed.device_mesh import init_device_mesh

    mesh = init_device_mesh(device.type, (dist.world_size(),))
    _shard(model, mesh)
    for net in frozen:
        # A root is by default left unsharded after forward (a backward would follow); nothing follows for a frozen
        # network, so it would stay gathered, and its shards would no longer line up with the student's.
        _shard(net, mesh, reshard_root=True)
    return model


def _shard(model: nn.Module, mesh, reshard_root: bool | None = None) -> None:
    """FSDP2 ``fully_shard`` each transformer block, then the root (its embedders and final layer).

    The sampling fast path calls ``encode_caption`` (root) and each block's ``caption_kv`` outside ``forward``; they
    are registered as forward methods, so FSDP gathers the shards they read around them as it does for ``forward``.
    """
    from torch.distributed.fsdp import fully_shard, register_fsdp_forward_method

    blocks = model.fsdp_wrap_modules if isinstance(model, FSDPUnits) else getattr(model, "blocks", None)
    if blocks is None:
        raise AttributeError("parallel='fsdp' needs the model to expose `fsdp_wrap_modules` or `blocks`")
    for block in blocks:
        fully_shard(block, mesh=mesh)
        if isinstance(block, CaptionKVBlock):
            register_fsdp_forward_method(block, "caption_kv")
    fully_shard(model, mesh=mesh, reshard_after_forward=reshard_root)
    if isinstance(model, CaptionEncoder):
        register_fsdp_forward_method(model, "encode_caption")


def unwrap(model: nn.Module) -> nn.Module:
    """The plain network inside a DDP wrapper (FSDP2 shards in place, so it is its own unwrapped module)."""
    return model.module if isinstance(model, DistributedDataParallel) else model


@contextmanager
def no_sync(model: nn.Module, skip: bool):
    """Skip the gradient all-reduce inside the block when ``skip`` (all but the last micro-step of accumulation)."""
    if not skip:
        yield
    elif isinstance(model, DistributedDataParallel):
        with model.no_sync():
            yield
    elif hasattr(model, "set_requires_gradient_sync"):
        model.set_requires_gradient_sync(False)
        try:
            yield
        finally:
            model.set_requires_gradient_sync(True)
    else:
        with nullcontext():
            yield


def is_sharded(model: nn.Module) -> bool:
    """True when the parameters are FSDP2 DTensors."""
    return any(is_dtensor(p) for p in model.parameters())


def full_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """Complete CPU state dict of the unwrapped network (collective under FSDP)."""
    if is_sharded(model):
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

        return get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    return {k: v.detach().cpu() for k, v in model.state_dict().items()}


def load_full_state_dict(model: nn.Module, state: dict[str, torch.Tensor], strict: bool = True) -> None:
    """Load a complete (gathered) state dict into ``model``, keeping only this rank's shards when it is sharded;
    every key must match (``strict``; else ``state`` may hold a subset, e.g. only the trained parameters, and
    unexpected keys still fail). Inverse of :func:`full_state_dict`, so checkpoints do not depend on the world size."""
    if is_sharded(model):
        from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict

        result = set_model_state_dict(model, state, options=StateDictOptions(full_state_dict=True, strict=strict))
    else:
        result = model.load_state_dict(state, strict=strict)
    if not strict and result.unexpected_keys:
        raise KeyError(f"unexpected keys {sorted(result.unexpected_keys)[:5]}")


def optimizer_state_dict(model: nn.Module, optimizer: torch.optim.Optimizer) -> dict:
    """Optimizer state that can be loaded back by :func:`load_optimizer_state_dict` (collective under FSDP)."""
    if is_sharded(model):
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_optimizer_state_dict

        options = StateDictOptions(full_state_dict=True, cpu_offload=True)
        return get_optimizer_state_dict(model, optimizer, options=options)
    return optimizer.state_dict()


def load_optimizer_state_dict(model: nn.Module, optimizer: torch.optim.Optimizer, state: dict) -> None:
    """Inverse of :func:`optimizer_state_dict`."""
    if is_sharded(model):
        from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict

        set_optimizer_state_dict(model, optimizer, state, options=StateDictOptions(full_state_dict=True))
    else:
        optimizer.load_state_dict(state)
