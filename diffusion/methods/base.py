"""The method interface shared by every training objective (teacher diffusion, LCM distillation, ControlNet).

The trainer never branches on the method (as in EDM's ``loss_fn(net, images, labels)``): it calls
``loss, logs = method(model, batch)`` and the hooks below. See docs/design.md, "Methods".
"""

from torch import Tensor, nn


class Method(nn.Module):
    """Base class: a loss object plus the hooks the trainer calls. Subclasses implement ``forward``.

    ``requires_load_from``: the trainer refuses a config without ``load_from`` (a method that distils the loaded
    weights must never start from a random network).
    """

    requires_load_from: bool = False

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
