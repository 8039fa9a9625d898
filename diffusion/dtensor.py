"""FSDP2's sharded tensors (DTensors) seen from code that must also run unsharded: the engine (``engine/parallel.py``,
``engine/ema.py``, validation) and the methods (the LCM target's shard-local EMA update, ``methods/lcm_targets.py``).

A module of its own because the methods cannot import the engine: the engine builds the methods
(``diffusion.build``), so ``diffusion.engine`` imports ``diffusion.methods``. The DTensor class is never imported
(``torch.distributed`` may be absent); a DTensor is recognised by its ``full_tensor`` method.
"""

import torch


def is_dtensor(tensor: torch.Tensor) -> bool:
    """True for a sharded FSDP2 tensor (a DTensor)."""
    return hasattr(tensor, "full_tensor")


def full_tensor(tensor: torch.Tensor) -> torch.Tensor:
    """The whole tensor, gathering a sharded (FSDP2 DTensor) one (collective); plain tensors pass through."""
    return tensor.full_tensor() if is_dtensor(tensor) else tensor


def local_tensor(tensor: torch.Tensor) -> torch.Tensor:
    """This rank's shard of an FSDP2 DTensor (a view: in-place updates reach the sharded tensor); plain tensors pass
    through."""
    return tensor.to_local() if is_dtensor(tensor) else tensor
