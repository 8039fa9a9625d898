"""Latent consistency models for PixArt-delta (arXiv 2401.05252 §3, Algorithm 1): boundary scalings, the DDIM
solver used by latent consistency distillation (skip k = 20 of 1000, 50 DDIM steps), and the multistep LCM sampler.

``boundary_scalings`` is the single definition of c_skip / c_out: distillation and sampling both call it, so
f(x, t) = c_skip(t) x + c_out(t) x0(x, t) is the same function at training and at inference.
"""

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from diffusion.registry import SCHEDULERS
from diffusion.schedulers.noise_schedule import NoiseSchedule

LCM_SPACINGS = ("pixart", "diffusers")


@dataclass(frozen=True)
class LCMSettings:
    """What a latent consistency student learns besides its weights (PixArt-delta §3.1): the DDIM grid of
    distillation (``num_ddim_steps`` N of the T training steps, skip k = T // N; also the LCM sampler's "original
    steps") and the boundary scalings (``timestep_scaling``, ``sigma_data``). The config's ``method`` section sets them
    (``LCMDistillation``'s keys of the same names); distillation and sampling read them from there."""

    num_ddim_steps: int = 50
    timestep_scaling: float = 10.0
    sigma_data: float = 0.5

    def __post_init__(self) -> None:
        if self.num_ddim_steps < 1:
            raise ValueError(f"num_ddim_steps must be >= 1, got {self.num_ddim_steps}")
        if not (self.timestep_scaling > 0 and self.sigma_data > 0):
            raise ValueError(
                f"timestep_scaling and sigma_data must be positive, got {self.timestep_scaling} and {self.sigma_data}"
            )

    def scalings(self, t: Tensor | int | float) -> tuple[Tensor, Tensor]:
        """(c_skip, c_out) at ``t``: :func:`boundary_scalings` with these settings."""
        return boundary_scalings(t, self.sigma_data, self.timestep_scaling)


def boundary_scalings(
    t: Tensor | int | float,
    sigma_data: float = LCMSettings.sigma_data,
    timestep_scaling: float = LCMSettings.timestep_scaling,
) -> tuple[Tensor, Tensor]:
    """Consistency-model boundary scalings on discrete timesteps (c_skip(0) = 1, c_out(0) = 0 exactly).

    With s = timestep_scaling * t: c_skip = sigma_data^2 / (s^2 + sigma_data^2), c_out = s / sqrt(s^2 + sigma_data^2).

    Args:
        t: timesteps of any shape; integers are promoted to float64.
    Returns: (c_skip, c_out), each shaped like ``t`` (float64 for integer or Python input, else ``t.dtype``).
    """
    t = torch.as_tensor(t)
    if not t.is_floating_point():
        t = t.double()
    s = t * timestep_scaling
    denom = s**2 + sigma_data**2
    return sigma_data**2 / denom, s / denom.sqrt()


class DDIMSolver:
    """The deterministic DDIM jump from t_{n+k} to t_n used as the ODE solver Psi in LCD.

    Args:
        schedule: the teacher's noise schedule (T = ``schedule.num_train_timesteps``).
        num_ddim_steps: N; the skip is k = T // N.

    ``ddim_timesteps`` (N,) = [k-1, 2k-1, ..., Nk-1]; ``alphas_cumprod_prev`` (N,) holds a at t_i - k, with a[0] for
    index 0 (whose target timestep k - 1 - k is clamped to 0).
    """

    def __init__(self, schedule: NoiseSchedule, num_ddim_steps: int = LCMSettings.num_ddim_steps) -> None:
        num_train_timesteps = schedule.num_train_timesteps
        if not 1 <= num_ddim_steps <= num_train_timesteps:
            raise ValueError(f"num_ddim_steps must be in [1, {num_train_timesteps}], got {num_ddim_steps}")
        self.skip = num_train_timesteps // num_ddim_steps
        self.num_ddim_steps = num_ddim_steps
        ac = schedule.alphas_cumprod
        self.ddim_timesteps = torch.arange(1, num_ddim_steps + 1, dtype=torch.int64) * self.skip - 1
        self.alphas_cumprod_prev = torch.cat([ac[:1], ac[self.ddim_timesteps[:-1]]])

    def ddim_step(self, x0: Tensor, eps: Tensor, index: Tensor) -> Tensor:
        """x_prev = sqrt(a_prev) x0 + sqrt(1 - a_prev) eps. x0, eps (B,C,H,W); index (B,) into ddim_timesteps."""
        a_prev = NoiseSchedule.gather(self.alphas_cumprod_prev, index, x0)
        return a_prev.sqrt() * x0 + (1.0 - a_prev).sqrt() * eps

    def timesteps_of(self, index: Tensor) -> tuple[Tensor, Tensor]:
        """(start_t, t) of grid indices ``index`` (B,): start_t = ddim_timesteps[index], t = max(start_t - k, 0)."""
        start_t = self.ddim_timesteps.to(index.device)[index]
        return start_t, (start_t - self.skip).clamp(min=0)


@SCHEDULERS.register_module()
class LCMScheduler:
    """Multistep latent-consistency sampler (eps-prediction), written after diffusers' ``LCMScheduler`` semantics.

    Args:
        noise_schedule: the teacher's schedule (None: PixArt-alpha's, ``NoiseSchedule()``).
        lcm: the student's :class:`LCMSettings` (None: PixArt-delta's); ``lcm.num_ddim_steps`` is the number of DDIM
            timesteps seen in distillation (50 -> origin = [19, 39, ..., 999]).
        spacing: default timesteps for ``num_steps``: "pixart" (official PixArt, origin[::-(50 // n)][:n],
            4 -> [999, 759, 519, 279]) or "diffusers" (evenly spaced origin indices, 4 -> [999, 759, 499, 259]).
    Build it from a config with ``DiffusionProcess.from_config(cfg).lcm_scheduler(spacing)``.
    """

    def __init__(
        self,
        noise_schedule: NoiseSchedule | None = None,
        lcm: LCMSettings | None = None,
        spacing: str = "pixart",
    ) -> None:
        if spacing not in LCM_SPACINGS:
            raise ValueError(f"unknown LCM schedule {spacing!r}; expected one of {LCM_SPACINGS}")
        self.noise_schedule = NoiseSchedule() if noise_schedule is None else noise_schedule
        self.lcm = LCMSettings() if lcm is None else lcm
        self.num_train_timesteps = self.noise_schedule.num_train_timesteps
        self.original_steps = self.lcm.num_ddim_steps
        self.spacing = spacing
        self.origin_timesteps = DDIMSolver(self.noise_schedule, self.original_steps).ddim_timesteps
        self.timesteps: Tensor | None = None

    def set_timesteps(self, num_steps: int | None = None, timesteps: Tensor | list[int] | None = None) -> Tensor:
        """Set and return the (n,) int64 descending timesteps, from ``num_steps`` in 1..original_steps or explicit."""
        if (num_steps is None) == (timesteps is None):
            raise ValueError("pass exactly one of num_steps or timesteps")
        if timesteps is not None:
            steps = torch.as_tensor(timesteps, dtype=torch.int64).flatten()
            if len(steps) == 0:
                raise ValueError("timesteps must not be empty")
            if bool((steps[1:] >= steps[:-1]).any()):
                raise ValueError(f"timesteps must be strictly descending, got {steps.tolist()}")
            if int(steps.min()) < 0 or int(steps.max()) >= self.num_train_timesteps:
                raise ValueError(f"timesteps must lie in [0, {self.num_train_timesteps}), got {steps.tolist()}")
        else:
            if not 1 <= num_steps <= self.original_steps:
                raise ValueError(f"num_steps must be in [1, {self.original_steps}], got {num_steps}")
            origin = self.origin_timesteps.flip(0)
            if self.spacing == "pixart":
                steps = origin[:: self.original_steps // num_steps][:num_steps]
            else:
                # numpy's linspace, as diffusers uses it: torch's rounds differently and flips some floors.
                index = np.floor(np.linspace(0, self.original_steps, num=num_steps, endpoint=False)).astype(np.int64)
                steps = origin[torch.from_numpy(index)]
        self.timesteps = steps.clone()
        return self.timesteps

    def step(
        self, model_output: Tensor, timestep: int | Tensor, sample: Tensor, generator: torch.Generator | None = None
    ) -> tuple[Tensor, Tensor]:
        """One LCM step (Algorithm 1 of Luo et al. 2023, multistep sampling).

        Args:
            model_output: (B,C,H,W) predicted eps at ``timestep``.
            timestep: the current timestep, one of ``self.timesteps`` (an int or a tensor of equal values).
            sample: (B,C,H,W) current noisy latent.
            generator: draws the re-noising noise like diffusers' ``randn_tensor``.
        Returns: (prev_sample, denoised), each (B,C,H,W); on the last step prev_sample is denoised (no noise).
        """
        if self.timesteps is None:
            raise RuntimeError("call set_timesteps before step")
        t = torch.as_tensor(timestep).flatten()
        if bool((t != t[0]).any()):
            raise ValueError("LCMScheduler.step needs one timestep shared by the whole batch")
        t = int(t[0])
        matches = (self.timesteps == t).nonzero()
        if len(matches) == 0:
            raise ValueError(f"timestep {t} is not in the schedule {self.timesteps.tolist()}")
        index = int(matches[0])
        ac = self.noise_schedule.alphas_cumprod
        # 1. x0 from the eps prediction at t.
        a_t = ac[t].item()
        x0 = (sample - math.sqrt(1.0 - a_t) * model_output) / math.sqrt(a_t)
        # 2. Consistency function f(x, t) = c_skip x + c_out x0 (shared with distillation).
        c_skip, c_out = self.lcm.scalings(t)
        denoised = c_out.item() * x0 + c_skip.item() * sample
        # 3. Re-noise to the next timestep, except after the last step.
        if index == len(self.timesteps) - 1:
            return denoised, denoised
        a_prev = ac[int(self.timesteps[index + 1])].item()
        device = generator.device if generator is not None else model_output.device
        noise = torch.randn(model_output.shape, generator=generator, device=device, dtype=denoised.dtype)
        prev = math.sqrt(a_prev) * denoised + math.sqrt(1.0 - a_prev) * noise.to(model_output.device)
        return prev, denoised

    @torch.no_grad()
    def sample(
        self,
        denoise_fn: Callable[[Tensor, Tensor], Tensor],
        x_T: Tensor,
        num_steps: int | None = None,
        generator: torch.Generator | None = None,
        timesteps: Tensor | list[int] | None = None,
    ) -> Tensor:
        """Run the whole LCM loop: ``denoise_fn(xt (B,C,H,W), t (B,) int64) -> eps``; returns the final denoised."""
        self.set_timesteps(num_steps, timesteps)
        x, denoised = x_T, x_T
        for t in self.timesteps.tolist():
            eps = denoise_fn(x, torch.full((x.shape[0],), t, dtype=torch.int64, device=x.device))
            x, denoised = self.step(eps, t, x, generator)
        return denoised
