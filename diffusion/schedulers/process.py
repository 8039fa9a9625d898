"""The diffusion process of a config, defined once: the noise schedule a model is trained under (T, betas;
PixArt-alpha's linear 1e-4 -> 0.02 over 1000 steps, which PixArt-delta §3.1 / Fig. 3 keeps) and, for an LCM student,
the consistency function it learns (Algorithm 1: the DDIM grid of N steps and the boundary scalings).

A config fills it in two places, each the natural home of its values:

    diffusion = dict(num_train_timesteps=1000, beta_schedule="linear", beta_start=1e-4, beta_end=0.02)
    method = dict(type="LCMDistillation", num_ddim_steps=50, timestep_scaling=10.0, sigma_data=0.5, ...)

Both are optional (left out: the values above). :meth:`DiffusionProcess.from_config` is the one reader: the method
(through ``diffusion.build.build_method``), every pipeline (``diffusion.build.load_pipeline``, the trainer's sample
grids) and the diffusers exporter take the process from it, so a checkpoint's config decides how it is sampled.
Configs written before the ``diffusion`` section existed put T and the betas in the method (``method.num_steps`` of
``DiffusionLoss``, ``method.num_train_steps`` of ``LCMDistillation``, ``method.beta_start`` / ``beta_end``); they are
still read, with a ``FutureWarning`` naming the new key.
"""

from __future__ import annotations

import inspect
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field, fields

from diffusion.registry import MOVED_KEYS
from diffusion.schedulers.lcm import DDIMSolver, LCMScheduler, LCMSettings
from diffusion.schedulers.noise_schedule import NoiseSchedule

# the keys of the top-level ``diffusion`` section: NoiseSchedule's arguments (explicit betas are not a config value)
DIFFUSION_KEYS = tuple(name for name in inspect.signature(NoiseSchedule).parameters if name != "betas")
# the keys of the ``method`` section that set the LCM settings (LCMDistillation's arguments of the same names)
LCM_KEYS = tuple(f.name for f in fields(LCMSettings))


@dataclass(frozen=True)
class DiffusionProcess:
    """The noise schedule and the LCM settings a model was trained under (equal when both are)."""

    schedule: NoiseSchedule = field(default_factory=NoiseSchedule)
    lcm: LCMSettings = field(default_factory=LCMSettings)

    @classmethod
    def from_config(cls, cfg: Mapping) -> DiffusionProcess:
        """The process of ``cfg``: ``cfg.diffusion`` (see :func:`diffusion_section`) and the LCM keys of
        ``cfg.method``; keys left out take the defaults above. An unknown ``diffusion`` key is a ``KeyError``
        naming it; a value out of range a ``ValueError``."""
        method = cfg.get("method") or {}
        return cls(
            NoiseSchedule(**diffusion_section(cfg)), LCMSettings(**{k: method[k] for k in LCM_KEYS if k in method})
        )

    def ddim_solver(self) -> DDIMSolver:
        """The DDIM grid of distillation (N = ``lcm.num_ddim_steps`` of T)."""
        return DDIMSolver(self.schedule, self.lcm.num_ddim_steps)

    def lcm_scheduler(self, spacing: str = "pixart") -> LCMScheduler:
        """The multistep LCM sampler of this process (``spacing``: "pixart" or "diffusers" timesteps)."""
        return LCMScheduler(self.schedule, self.lcm, spacing)


def diffusion_section(cfg: Mapping) -> dict:
    """``cfg.diffusion`` as NoiseSchedule keyword arguments, with the schedule keys of older configs' ``method``
    section moved in (``FutureWarning``; a value given in both places must agree, else ``ValueError``)."""
    section = dict(cfg.get("diffusion") or {})
    unknown = sorted(section.keys() - set(DIFFUSION_KEYS))
    if unknown:
        raise KeyError(f"unknown key(s) {unknown} in config section 'diffusion'; known: {list(DIFFUSION_KEYS)}")
    section.update(moved_schedule_keys(cfg.get("method") or {}, section))
    return section


def moved_schedule_keys(method: Mapping, section: Mapping | None = None) -> dict:
    """The schedule keys an older config sets in its ``method`` section, under their ``diffusion`` names (see
    ``diffusion.registry.MOVED_KEYS``), each with a ``FutureWarning``; one that ``section`` (the config's
    ``diffusion`` section) sets to another value is a ``ValueError`` naming both."""
    section = section or {}
    moved = {}
    for old, new in MOVED_KEYS["method"].items():
        if old not in method:
            continue
        name = new.split(".", 1)[1]
        if name in section and section[name] != method[old]:
            raise ValueError(f"config keys method.{old} = {method[old]} and {new} = {section[name]} disagree")
        if name in moved and moved[name] != method[old]:
            raise ValueError(f"config keys method.{old} = {method[old]} and another old key for {new} disagree")
        warnings.warn(
            f"config key method.{old} is now {new} (the top-level section 'diffusion', shared by the method, the "
            "samplers and the exporter); read as such",
            FutureWarning,
            stacklevel=3,
        )
        moved[name] = method[old]
    return moved
