"""The discrete variance-preserving noise schedule of PixArt-alpha (IDDPM, "linear" betas 1e-4 -> 0.02, T = 1000).

PixArt-delta (arXiv 2401.05252) §3.1 / Fig. 3 keeps this schedule for the teacher, the LCM student and the ControlNet
(LCM's Stable Diffusion schedule was "scaled_linear" 0.00085 -> 0.012). The schedule a config trains and samples under
is its top-level ``diffusion`` section, read once by :class:`diffusion.schedulers.DiffusionProcess`.
All tables are float64 on the CPU; ``gather`` casts the per-timestep values to the dtype and device of the tensor they
multiply, so precision is lost only once, at the last moment.
"""

import numpy as np
import torch
from torch import Tensor

from diffusion.registry import SCHEDULERS

BETA_SCHEDULES = ("linear", "scaled_linear")


def linear_betas(num_train_timesteps: int = 1000, beta_start: float = 1e-4, beta_end: float = 0.02) -> Tensor:
    """PixArt-alpha / IDDPM "linear" betas, rescaled by ``1000 / T`` so any T spans the same SNR range.

    Returns: (num_train_timesteps,) float64.
    """
    scale = 1000.0 / num_train_timesteps
    return torch.from_numpy(np.linspace(scale * beta_start, scale * beta_end, num_train_timesteps, dtype=np.float64))


def make_betas(num_train_timesteps: int, beta_schedule: str, beta_start: float, beta_end: float) -> Tensor:
    """(T,) float64 betas: "linear" (IDDPM's, :func:`linear_betas`) or "scaled_linear" (Stable Diffusion's and LCM's,
    ``linspace(sqrt(beta_start), sqrt(beta_end), T) ** 2``, not rescaled: diffusers' definition)."""
    if beta_schedule == "linear":
        return linear_betas(num_train_timesteps, beta_start, beta_end)
    if beta_schedule == "scaled_linear":
        root = np.linspace(beta_start**0.5, beta_end**0.5, num_train_timesteps, dtype=np.float64)
        return torch.from_numpy(root**2)
    raise ValueError(f"unknown beta_schedule {beta_schedule!r}; expected one of {BETA_SCHEDULES}")


@SCHEDULERS.register_module()
class NoiseSchedule:
    """Forward process q(x_t | x_0) = N(sqrt(a_t) x_0, (1 - a_t) I) with a_t = prod_{s<=t} (1 - beta_s).

    Args:
        num_train_timesteps: number of training timesteps T (t in [0, T)).
        beta_schedule: "linear" (PixArt-alpha) or "scaled_linear" (see :func:`make_betas`).
        beta_start, beta_end: ends of the beta schedule (for "linear": at T = 1000).
        betas: explicit (T,) betas; overrides the three arguments above.

    Tables (all (T,) float64): ``betas``, ``alphas``, ``alphas_cumprod``, ``alphas_cumprod_prev`` (1 prepended),
    ``posterior_variance``, ``posterior_log_variance_clipped`` (entry 0 replaced by entry 1, as in IDDPM),
    ``posterior_mean_coef1`` (multiplies x0) and ``posterior_mean_coef2`` (multiplies xt). Two schedules are equal
    when their betas are. ``beta_schedule``, ``beta_start``, ``beta_end`` keep the arguments (None for explicit
    betas).
    """

    def __init__(
        self,
        num_train_timesteps: int = 1000,
        beta_schedule: str = "linear",
        beta_start: float = 1e-4,
        beta_end: float = 0.02,
        betas: Tensor | None = None,
    ) -> None:
        if betas is None:
            if num_train_timesteps < 2:
                raise ValueError(f"num_train_timesteps must be at least 2, got {num_train_timesteps}")
            if not 0 < beta_start <= beta_end:
                raise ValueError(f"need 0 < beta_start <= beta_end, got {beta_start} and {beta_end}")
            betas = make_betas(num_train_timesteps, beta_schedule, beta_start, beta_end)
            self.beta_schedule, self.beta_start, self.beta_end = beta_schedule, beta_start, beta_end
        else:
            betas = torch.as_tensor(betas).double()
            self.beta_schedule = self.beta_start = self.beta_end = None
        if betas.ndim != 1 or not bool(((betas > 0) & (betas <= 1)).all()):
            raise ValueError(
                "betas must be a 1-D tensor with values in (0, 1] (a 'linear' schedule is rescaled by 1000 / T: "
                "beta_end * 1000 / num_train_timesteps must stay <= 1)"
            )
        self.num_train_timesteps = len(betas)
        self.betas = betas
        self.alphas = 1.0 - betas
        self.alphas_cumprod = torch.cumprod(self.alphas, dim=0)
        self.alphas_cumprod_prev = torch.cat([torch.ones(1, dtype=torch.float64), self.alphas_cumprod[:-1]])
        self.posterior_variance = betas * (1.0 - self.alphas_cumprod_prev) / (1.0 - self.alphas_cumprod)
        # The posterior variance is 0 at t = 0; IDDPM clips its log by reusing the value at t = 1.
        self.posterior_log_variance_clipped = torch.log(
            torch.cat([self.posterior_variance[1:2], self.posterior_variance[1:]])
        )
        self.posterior_mean_coef1 = betas * self.alphas_cumprod_prev.sqrt() / (1.0 - self.alphas_cumprod)
        self.posterior_mean_coef2 = (1.0 - self.alphas_cumprod_prev) * self.alphas.sqrt() / (1.0 - self.alphas_cumprod)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, NoiseSchedule) and torch.equal(self.betas, other.betas)

    __hash__ = None  # mutable tables: equal by value, not hashable

    def __repr__(self) -> str:
        b = self.betas
        return f"NoiseSchedule(T={self.num_train_timesteps}, betas {b[0].item():.6g} -> {b[-1].item():.6g})"

    @staticmethod
    def gather(table: Tensor, t: Tensor, x: Tensor) -> Tensor:
        """Pick ``table[t]`` and shape it to broadcast against ``x``.

        Args:
            table: (T,) float64 table.
            t: (B,) integer timesteps.
            x: (B, ...) tensor whose dtype/device the result takes.
        Returns: (B, 1, ..., 1) with ``x.ndim`` dims.
        """
        values = table.to(x.device)[t.to(x.device).long()].to(x.dtype)
        return values.reshape(-1, *([1] * (x.ndim - 1)))

    def q_sample(self, x0: Tensor, t: Tensor, eps: Tensor) -> Tensor:
        """Noise ``x0`` (B,C,H,W) to timesteps ``t`` (B,) with noise ``eps`` (B,C,H,W). Returns xt (B,C,H,W)."""
        ac = self.gather(self.alphas_cumprod.sqrt(), t, x0)
        sc = self.gather((1.0 - self.alphas_cumprod).sqrt(), t, x0)
        return ac * x0 + sc * eps

    def x0_from_eps(self, xt: Tensor, t: Tensor, eps: Tensor) -> Tensor:
        """x0 = (xt - sqrt(1 - a_t) eps) / sqrt(a_t), written as IDDPM does. Shapes (B,C,H,W), t (B,)."""
        recip = self.gather((1.0 / self.alphas_cumprod).sqrt(), t, xt)
        recipm1 = self.gather((1.0 / self.alphas_cumprod - 1.0).sqrt(), t, xt)
        return recip * xt - recipm1 * eps

    def eps_from_x0(self, xt: Tensor, t: Tensor, x0: Tensor) -> Tensor:
        """eps = (xt / sqrt(a_t) - x0) / sqrt(1 / a_t - 1). Shapes (B,C,H,W), t (B,)."""
        recip = self.gather((1.0 / self.alphas_cumprod).sqrt(), t, xt)
        recipm1 = self.gather((1.0 / self.alphas_cumprod - 1.0).sqrt(), t, xt)
        return (recip * xt - x0) / recipm1

    def q_posterior(self, x0: Tensor, xt: Tensor, t: Tensor) -> tuple[Tensor, Tensor]:
        """Mean (B,C,H,W) and clipped log-variance (B,1,1,1) of q(x_{t-1} | x_t, x_0)."""
        mean = self.gather(self.posterior_mean_coef1, t, xt) * x0 + self.gather(self.posterior_mean_coef2, t, xt) * xt
        return mean, self.gather(self.posterior_log_variance_clipped, t, xt)
