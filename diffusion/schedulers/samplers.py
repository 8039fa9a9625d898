"""Teacher samplers: DDIM (Song et al. 2021) and DPM-Solver++(2M) (Lu et al. 2022), as PixArt-alpha samples.

PixArt-delta (arXiv 2401.05252) compares its 4-step LCM against the PixArt-alpha teacher sampled with DPM-Solver
(14 or 20 steps, §3.3, Table 2). Both samplers take a ``denoise_fn(xt, t) -> eps`` that already applies classifier-free
guidance, call it exactly once per step, and return the final x0 sample. All batch elements share the timestep, so the
per-step coefficients are float64 Python scalars.

Timestep spacings, chosen to match diffusers so the parity tests are meaningful:
- DDIM: ``DDIMScheduler`` defaults, "leading" spacing ``arange(n) * (T // n)`` reversed (steps_offset 0) and
  ``set_alpha_to_one=True`` (the last step lands on a_prev = 1, i.e. returns the x0 prediction); "trailing" optional.
- DPM-Solver++: ``DPMSolverMultistepScheduler`` as configured by PixArt's pipelines: "linspace" spacing
  ``round(linspace(0, T - 1, n + 1))[::-1][:-1]``, order 2 midpoint, first-order first and last step, final sigma 0.
"""

import math
from collections.abc import Callable

import numpy as np
import torch
from torch import Tensor

from diffusion.schedulers.noise_schedule import NoiseSchedule

DenoiseFn = Callable[[Tensor, Tensor], Tensor]


def ddim_timesteps(num_steps: int, num_train_timesteps: int, spacing: str = "leading") -> Tensor:
    """Descending (num_steps,) int64 DDIM timesteps ("leading" or "trailing", as diffusers' DDIMScheduler)."""
    if not 1 <= num_steps <= num_train_timesteps:
        raise ValueError(f"num_steps must be in [1, {num_train_timesteps}], got {num_steps}")
    if spacing == "leading":
        steps = np.arange(num_steps)[::-1] * (num_train_timesteps // num_steps)
    elif spacing == "trailing":
        steps = np.round(np.arange(num_train_timesteps, 0, -num_train_timesteps / num_steps)) - 1
    else:
        raise ValueError(f"unknown DDIM spacing {spacing!r}; expected 'leading' or 'trailing'")
    return torch.from_numpy(steps.astype(np.int64).copy())


def dpm_solver_timesteps(num_steps: int, num_train_timesteps: int) -> Tensor:
    """Descending (num_steps,) int64 timesteps with diffusers' "linspace" spacing (999 first)."""
    if not 1 <= num_steps <= num_train_timesteps:
        raise ValueError(f"num_steps must be in [1, {num_train_timesteps}], got {num_steps}")
    steps = np.linspace(0, num_train_timesteps - 1, num_steps + 1).round()[::-1][:-1]
    return torch.from_numpy(steps.astype(np.int64).copy())


def _check_timesteps(timesteps: Tensor, num_train_timesteps: int) -> Tensor:
    timesteps = torch.as_tensor(timesteps, dtype=torch.int64).flatten()
    if len(timesteps) == 0:
        raise ValueError("timesteps must not be empty")
    if bool((timesteps[1:] >= timesteps[:-1]).any()):
        raise ValueError(f"timesteps must be strictly descending, got {timesteps.tolist()}")
    if int(timesteps.min()) < 0 or int(timesteps.max()) >= num_train_timesteps:
        raise ValueError(f"timesteps must lie in [0, {num_train_timesteps}), got {timesteps.tolist()}")
    return timesteps


def _batch_t(t: int, x: Tensor) -> Tensor:
    return torch.full((x.shape[0],), t, dtype=torch.int64, device=x.device)


@torch.no_grad()
def ddim_sample(
    denoise_fn: DenoiseFn,
    x_T: Tensor,
    schedule: NoiseSchedule,
    num_steps: int,
    eta: float = 0.0,
    generator: torch.Generator | None = None,
    timesteps: Tensor | list[int] | None = None,
    spacing: str = "leading",
) -> Tensor:
    """DDIM sampling (eta = 0: deterministic; eta = 1: DDPM-like ancestral noise).

    Args:
        denoise_fn: ``(xt (B,C,H,W), t (B,) int64) -> eps (B,C,H,W)``, guidance already applied.
        x_T: (B,C,H,W) starting noise.
        num_steps: number of steps (ignored when ``timesteps`` is given).
        generator: draws the eta-noise exactly as diffusers' ``randn_tensor`` does (on the generator's device).
        timesteps: explicit strictly descending timesteps.
    Returns: (B,C,H,W) x0 sample after ``num_steps`` calls of ``denoise_fn``.
    """
    ac = schedule.alphas_cumprod
    if timesteps is None:
        timesteps = ddim_timesteps(num_steps, schedule.num_train_timesteps, spacing)
    timesteps = _check_timesteps(timesteps, schedule.num_train_timesteps).tolist()
    x = x_T
    for i, t in enumerate(timesteps):
        eps = denoise_fn(x, _batch_t(t, x))
        a_t = ac[t].item()
        a_prev = ac[timesteps[i + 1]].item() if i + 1 < len(timesteps) else 1.0
        x0 = (x - math.sqrt(1.0 - a_t) * eps) / math.sqrt(a_t)
        std = eta * math.sqrt((1.0 - a_prev) / (1.0 - a_t) * (1.0 - a_t / a_prev))
        x = math.sqrt(a_prev) * x0 + math.sqrt(max(1.0 - a_prev - std**2, 0.0)) * eps
        if eta > 0:
            device = generator.device if generator is not None else x.device
            noise = torch.randn(x.shape, generator=generator, device=device, dtype=x.dtype).to(x.device)
            x = x + std * noise
    return x


def _alpha_sigma_lambda(ac: Tensor, t: int) -> tuple[float, float, float]:
    """(alpha_t, sigma_t, lambda_t = log(alpha_t / sigma_t)) of the VP process at integer t."""
    a = ac[t].item()
    alpha, sigma = math.sqrt(a), math.sqrt(1.0 - a)
    return alpha, sigma, math.log(alpha) - math.log(sigma)


@torch.no_grad()
def dpm_solver_pp_sample(
    denoise_fn: DenoiseFn,
    x_T: Tensor,
    schedule: NoiseSchedule,
    num_steps: int,
    timesteps: Tensor | list[int] | None = None,
) -> Tensor:
    """Multistep DPM-Solver++(2M) in data (x0) prediction, midpoint form, with a final step to sigma = 0.

    Step 0 is first order (no history yet), steps 1..n-2 are second order, and the last step jumps to sigma = 0,
    where the first-order update reduces to the current x0 prediction.

    Args:
        denoise_fn: ``(xt (B,C,H,W), t (B,) int64) -> eps (B,C,H,W)``, guidance already applied.
        x_T: (B,C,H,W) starting noise.
        num_steps: number of model evaluations (ignored when ``timesteps`` is given).
        timesteps: explicit strictly descending timesteps.
    Returns: (B,C,H,W) x0 sample.
    """
    ac = schedule.alphas_cumprod
    if timesteps is None:
        timesteps = dpm_solver_timesteps(num_steps, schedule.num_train_timesteps)
    timesteps = _check_timesteps(timesteps, schedule.num_train_timesteps).tolist()
    x = x_T
    prev_x0, prev_lambda = None, None
    for i, t in enumerate(timesteps):
        eps = denoise_fn(x, _batch_t(t, x))
        alpha_s, sigma_s, lambda_s = _alpha_sigma_lambda(ac, t)
        x0 = (x - sigma_s * eps) / alpha_s
        if i == len(timesteps) - 1:
            return x0
        alpha_t, sigma_t, lambda_t = _alpha_sigma_lambda(ac, timesteps[i + 1])
        h = lambda_t - lambda_s
        phi = math.expm1(-h)  # exp(-h) - 1
        if prev_x0 is None:
            x = (sigma_t / sigma_s) * x - alpha_t * phi * x0
        else:
            r = (lambda_s - prev_lambda) / h
            d1 = (x0 - prev_x0) / r
            x = (sigma_t / sigma_s) * x - alpha_t * phi * x0 - 0.5 * alpha_t * phi * d1
        prev_x0, prev_lambda = x0, lambda_s
    return x
