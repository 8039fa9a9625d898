"""The method interface shared by every training objective (teacher diffusion, LCM distillation, ControlNet).

The trainer never branches on the method (as in EDM's ``loss_fn(net, images, labels)``): it calls
``loss, logs = method(model, batch)`` and the hooks below. See docs/design.md, "Methods".
"""

import torch
from torch import Tensor, nn

from diffusion.schedulers import NoiseSchedule


def checked_schedule(schedule: NoiseSchedule | None) -> NoiseSchedule:
    """The method's noise schedule: ``schedule``, or PixArt-alpha's for None. It is an object passed by
    ``diffusion.build.build_method`` (from the config's ``diffusion`` section), never a method config key."""
    if schedule is None:
        return NoiseSchedule()
    if not isinstance(schedule, NoiseSchedule):
        raise TypeError(
            f"method.schedule must be a NoiseSchedule, got {type(schedule).__name__}: the noise schedule is the "
            "config's top-level 'diffusion' section (diffusion=dict(num_train_timesteps=..., beta_start=..., ...))"
        )
    return schedule


class Draws:
    """Where a method's random draws (timesteps, noise, a sampled guidance scale) come from.

    ``generator`` None is the global RNG of the tensors' device: in training, the stream the trainer seeds per rank
    (``train.seed + rank``) and checkpoints per rank (``rng_rank{r}.pt``), so a resumed run draws exactly what the
    uninterrupted one drew. A given generator (tests, a caller that checkpoints it itself) is used alone: the draws
    are made on its device and moved, so they do not depend on where the model runs, and the global RNG is left
    untouched.
    """

    def __init__(self, generator: torch.Generator | None = None) -> None:
        self.generator = generator

    def _device(self, device: torch.device | str) -> torch.device | str:
        return device if self.generator is None else self.generator.device

    def randint(self, low: int, high: int, n: int, device: torch.device | str) -> Tensor:
        """(n,) int64 uniform on {low, ..., high - 1}."""
        draw = torch.randint(low, high, (n,), generator=self.generator, device=self._device(device))
        return draw.to(device)

    def rand(self, n: int, device: torch.device | str) -> Tensor:
        """(n,) float32 uniform on [0, 1)."""
        return torch.rand(n, generator=self.generator, device=self._device(device)).to(device)

    def uniform(self, n: int, low: float, high: float, device: torch.device | str) -> Tensor:
        """(n,) float32 uniform on [low, high)."""
        draw = torch.empty(n, device=self._device(device)).uniform_(low, high, generator=self.generator)
        return draw.to(device)

    def randn_like(self, x: Tensor) -> Tensor:
        """Standard normal noise shaped like ``x`` (its dtype and device)."""
        draw = torch.randn(x.shape, generator=self.generator, dtype=x.dtype, device=self._device(x.device))
        return draw.to(x.device)


class Method(nn.Module):
    """Base class: a loss object plus the hooks the trainer calls. Subclasses implement ``forward``.

    Args:
        generator: the source of the method's random draws (see :class:`Draws`); None: the global RNG, which is
            what the trainer uses (it seeds and checkpoints it per rank).

    ``requires_teacher``: the trainer refuses a config that names no teacher (``weights.teacher`` or
    ``weights.base``: a method that distils the loaded weights must never start from a random network).
    """

    requires_teacher: bool = False

    def __init__(self, generator: torch.Generator | None = None) -> None:
        super().__init__()
        self.draws = Draws(generator)

    def forward(self, model: nn.Module, batch: dict) -> tuple[Tensor, dict[str, Tensor | float]]:
        """Return the scalar loss for one prepared batch and a dict of values to log."""
        raise NotImplementedError

    def after_optimizer_step(self, model: nn.Module) -> None:
        """Called after each real optimizer step (e.g. the LCM target EMA). No-op by default."""

    def frozen_networks(self) -> list[nn.Module]:
        """Networks the method runs without gradients (a teacher, an EMA target): the trainer shards them like the
        model under FSDP. None by default."""
        return []

    def extra_state(self) -> dict[str, Tensor]:
        """Tensors owned by the method that a checkpoint must hold; none by default."""
        return {}

    def load_extra_state(self, state: dict[str, Tensor]) -> None:
        """Restore ``extra_state``; a method without extra state accepts only an empty dict."""
        if state:
            raise ValueError(f"{type(self).__name__} has no extra state, got keys {sorted(state)}")

    @classmethod
    def configured_sampler(cls, **method) -> dict:
        """The sampler for a model this method trained, from the method's config keys (``sampler``, ...): what
        ``sampler_defaults`` of a method built from them returns, without building it. ``{}``: the pipeline's."""
        return {}

    def sampler_defaults(self) -> dict:
        """The sampler config the trainer's sample grids should use."""
        return {}


def needs_teacher(method_cls: type | None) -> bool:
    """Whether a registered method class distils a pretrained teacher (:attr:`Method.requires_teacher`); a class
    that is no :class:`Method` (a test stand-in) or None (an unknown type, refused elsewhere) does not."""
    return isinstance(method_cls, type) and issubclass(method_cls, Method) and method_cls.requires_teacher
