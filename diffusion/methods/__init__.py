"""Training objectives (PixArt-delta arXiv 2401.05252): the teacher/ControlNet diffusion loss and LCM distillation."""

from collections.abc import Mapping

from diffusion.methods.base import Draws, Method
from diffusion.methods.diffusion_loss import DiffusionLoss
from diffusion.methods.lcm_distillation import LCDDraws, LCMDistillation, consistency_fn
from diffusion.methods.lcm_targets import EMATarget, StudentTarget
from diffusion.registry import METHODS

__all__ = [
    "DiffusionLoss",
    "Draws",
    "EMATarget",
    "LCDDraws",
    "LCMDistillation",
    "Method",
    "StudentTarget",
    "chosen_sampler",
    "configured_method",
    "consistency_fn",
    "method_sampler",
]


def configured_method(cfg: Mapping) -> type[Method]:
    """The Method class of ``cfg.method['type']``; a config without a ``method`` section (a sampling-only config of
    a teacher) is DiffusionLoss's. An unknown type is a KeyError naming it."""
    name = (cfg.get("method") or {}).get("type", "DiffusionLoss")
    method = METHODS.get(name)
    if method is None:
        raise KeyError(f"unknown method type {name!r} in the config's method section")
    return method


def method_sampler(cfg: Mapping) -> dict:
    """The sampler the trainer's sample grids use for ``cfg`` (its method's ``sampler_defaults()``), read from the
    config alone: LCM 4 steps for an LCM config, DPM-Solver++ for a teacher or ControlNet config."""
    method = {k: v for k, v in (cfg.get("method") or {}).items() if k != "type"}
    return configured_method(cfg).configured_sampler(**method)


def chosen_sampler(cfg: Mapping, name: str | None = None, **given) -> dict:
    """The sampler keywords a checkpoint of ``cfg`` is sampled with by a tool: the ``given`` ones that are not None,
    the rest from the config's method (:func:`method_sampler`) when ``name`` is None or names the method's own
    sampler (e.g. a w-embedding student's ``cfg_scale`` = w + 1); another sampler starts from its
    ``SAMPLER_DEFAULTS`` (filled by ``SamplerConfig``)."""
    sampler = method_sampler(cfg)
    if name is not None and name != sampler.get("name", "dpm"):
        sampler = {"name": name}
    sampler.update({k: v for k, v in given.items() if v is not None})
    return sampler
