"""The target network f_theta^- of latent consistency distillation (PixArt-delta arXiv 2401.05252 §3.1, Algorithm 1),
as a small strategy object so that ``LCMDistillation`` never asks whether a target exists:

- :class:`EMATarget`: a frozen copy of the student, theta^- <- mu theta^- + (1 - mu) theta after each real optimizer
  step (mu = 0.95; the official ``train_pixart_lcm.py``), checkpointed through the method's ``extra_state``;
- :class:`StudentTarget`: the student itself under ``no_grad`` (stop-gradient), as the official LCM-LoRA script.

Both keep their networks in plain lists, so they are neither parameters nor state_dict entries of the method.
"""

from __future__ import annotations

import copy
from collections.abc import Callable

import torch
from torch import Tensor, nn

from diffusion.dtensor import local_tensor


def frozen_copy(model: nn.Module, dtype: str | None, weights=None) -> nn.Module:
    """A frozen eval-mode copy of ``model`` (in bf16 when ``dtype == 'bf16'``), holding ``weights`` (a file or a
    state dict: the config's ``weights.teacher``) when given (see
    :func:`diffusion.model.controlnet_io.load_teacher_weights`)."""
    if dtype not in (None, "bf16"):
        raise ValueError(f"frozen network dtype must be None or 'bf16', got {dtype!r}")
    net = copy.deepcopy(model).eval().requires_grad_(False)
    if weights is not None:
        from diffusion.model.controlnet_io import load_teacher_weights  # lazy: the model package imports the registry

        load_teacher_weights(net, weights)
    return net.to(torch.bfloat16) if dtype == "bf16" else net


class EMATarget:
    """An EMA copy of the student.

    Args:
        student: the network being trained (copied here; the copy starts equal to it).
        decay: mu of the EMA (paper 0.95).
        dtype: 'bf16' keeps the copy in bfloat16 (loses updates below its precision); None: the student's dtype.
    """

    def __init__(self, student: nn.Module, decay: float, dtype: str | None = None) -> None:
        self.decay = decay
        self._net = [frozen_copy(student, dtype)]

    @property
    def network(self) -> nn.Module:
        return self._net[0]

    def frozen_networks(self) -> list[nn.Module]:
        return [self._net[0]]

    @torch.no_grad()
    def update(self, student: nn.Module) -> None:
        """theta^- <- mu theta^- + (1 - mu) theta over the student's trained parameters (a ControlNet's frozen base is
        equal in both: nothing to average). Under FSDP both are DTensors sharded alike: a shard-local update."""
        trained = dict(student.named_parameters())
        target, source = [], []
        for name, p in self._net[0].named_parameters():
            if trained[name].requires_grad:
                target.append(local_tensor(p))
                source.append(local_tensor(trained[name].detach()).to(p.dtype))
        torch._foreach_lerp_(target, source, 1.0 - self.decay)

    def state_dict(self, student: nn.Module) -> dict[str, Tensor]:
        """The copy's weights, gathered under FSDP (collective) so a checkpoint fits any world size; of a student with
        frozen parameters (a ControlNet's base) only the trained ones, as the trainer saves the student."""
        from diffusion.engine.checkpoint import trainable_only  # lazy: diffusion.engine builds methods
        from diffusion.engine.parallel import full_state_dict

        return trainable_only(student, full_state_dict(self._net[0]))

    def load_state_dict(self, state: dict[str, Tensor], student: nn.Module) -> None:
        """Inverse of :meth:`state_dict`: every trained parameter of ``student`` must be in ``state``."""
        from diffusion.engine.parallel import load_full_state_dict

        params = dict(student.named_parameters())
        trained = {name for name, p in params.items() if p.requires_grad}
        missing = sorted(trained - set(state))
        if missing:
            raise KeyError(f"the checkpoint's target lacks trained parameters {missing[:5]} (of {len(missing)})")
        load_full_state_dict(self._net[0], state, strict=len(trained) == len(params))

    def apply(self, fn: Callable[[Tensor], Tensor]) -> None:
        """``nn.Module._apply`` (``.to(device)``, ``.half()``) of the method, reaching the copy."""
        self._net[0]._apply(fn)

    def eval(self) -> None:
        self._net[0].eval()


class StudentTarget:
    """The student as its own target (LCM-LoRA): evaluated under ``no_grad`` by the method; nothing to update or
    save."""

    def __init__(self, student: nn.Module) -> None:
        self._net = [student]

    @property
    def network(self) -> nn.Module:
        return self._net[0]

    def frozen_networks(self) -> list[nn.Module]:
        return []

    def update(self, student: nn.Module) -> None:
        """Nothing: the target moves with the student."""

    def state_dict(self, student: nn.Module) -> dict[str, Tensor]:
        return {}

    def load_state_dict(self, state: dict[str, Tensor], student: nn.Module) -> None:
        if state:
            raise ValueError(f"an LCM-LoRA student is its own target: no target state, got {sorted(state)[:5]}")

    def apply(self, fn: Callable[[Tensor], Tensor]) -> None:
        """Nothing: the student is moved by the trainer."""

    def eval(self) -> None:
        """Nothing: the student's mode is the trainer's (the method evaluates it in eval mode for the target)."""
