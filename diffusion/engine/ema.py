"""Exponential moving average of the trained weights (PixArt-α keeps an EMA with rate 0.9999; PixArt-δ §3.1 updates
its LCM target network the same way with µ = 0.95, but that target lives in the method, not here).

The shadow copy is kept in float32 whatever the training dtype, and it is updated only after a real optimizer step.
"""

import math

import torch
from torch import nn

from diffusion.engine.parallel import full_tensor, is_dtensor


class EMA:
    """Float32 shadow of a module's parameters and floating-point buffers.

    ``shadow = r * shadow + (1 - r) * param`` for trainable parameters at every :meth:`update`; frozen
    parameters and buffers are copied, so the shadow always forms a complete, loadable state dict. Given the number
    of updates done so far ``n``, ``r = min(rate, (1 + n) / (10 + n))`` (the usual warmup): with a plain 0.999 the
    shadow of a 1500-step run would still hold 0.999^1500 = 22% of the random initialisation.

    Args:
        module: the (unwrapped) network whose weights are averaged.
        rate: decay per update in [0, 1); see :meth:`rate_from_halflife` to express it as a half-life.
    """

    def __init__(self, module: nn.Module, rate: float) -> None:
        if not 0.0 <= rate < 1.0:
            raise ValueError(f"EMA rate must lie in [0, 1), got {rate}")
        self.rate = rate
        self.shadow: dict[str, torch.Tensor] = {
            name: tensor.detach().float().clone() for name, tensor in self._tensors(module).items()
        }

    @staticmethod
    def rate_from_halflife(halflife_steps: float) -> float:
        """Rate whose weight on an old update halves every ``halflife_steps`` updates: ``0.5 ** (1 / halflife)``."""
        return math.exp(math.log(0.5) / halflife_steps)

    @staticmethod
    def _tensors(module: nn.Module) -> dict[str, torch.Tensor]:
        tensors = dict(module.named_parameters())
        tensors.update({name: buf for name, buf in module.named_buffers() if buf.is_floating_point()})
        return tensors

    @torch.no_grad()
    def update(self, module: nn.Module, num_updates: int | None = None) -> None:
        """Move the shadow towards the current weights of ``module`` (call after each real optimizer step).

        ``num_updates`` (the optimizer steps before this one) enables the warmup; None uses ``rate`` as it is.
        """
        rate = self.rate if num_updates is None else min(self.rate, (1 + num_updates) / (10 + num_updates))
        trained, targets, copies = [], [], []
        for name, tensor in self._tensors(module).items():
            if isinstance(tensor, nn.Parameter) and tensor.requires_grad:
                trained.append(self.shadow[name])
                targets.append(tensor.detach().float())
            else:
                copies.append((self.shadow[name], tensor))
        if trained:
            torch._foreach_lerp_(trained, targets, 1.0 - rate)
        for shadow, tensor in copies:
            shadow.copy_(tensor.detach())

    @torch.no_grad()
    def copy_to(self, module: nn.Module) -> None:
        """Write the averaged weights into ``module`` (same architecture), casting to its dtypes."""
        for name, tensor in self._tensors(module).items():
            tensor.copy_(self.shadow[name])

    def state_dict(self) -> dict[str, torch.Tensor]:
        """Full (gathered) float32 shadow tensors by parameter name; collective under FSDP."""
        return {name: full_tensor(tensor) for name, tensor in self.shadow.items()}

    @torch.no_grad()
    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        """Restore the shadow from :meth:`state_dict` output; names must match exactly."""
        missing, unexpected = self.shadow.keys() - state.keys(), state.keys() - self.shadow.keys()
        if missing or unexpected:
            raise KeyError(f"EMA state mismatch: missing {sorted(missing)}, unexpected {sorted(unexpected)}")
        for name, shadow in self.shadow.items():
            value = state[name].to(device=shadow.device, dtype=torch.float32)
            if is_dtensor(shadow):  # sharded shadow: keep only this rank's shard of the full tensor
                from torch.distributed.tensor import distribute_tensor

                value = distribute_tensor(value, shadow.device_mesh, shadow.placements)
            shadow.copy_(value)
