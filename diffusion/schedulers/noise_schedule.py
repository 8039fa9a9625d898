"""The discrete variance-preserving noise schedule of PixArt-alpha (IDDPM, "linear" betas 1e-4 -> 0.02, T = 1000).

PixArt-delta (arXiv 2401.05252) §3.1 / Fig. 3 keeps this schedule for the teacher, the LCM student and the ControlNet.
All tables are float64 on the CPU; ``gather`` casts the per-timestep values to the dtype and device of the tensor they
multiply, so precision is lost only once, at the last moment.
"""

import numpy as np
import torch
from torch import Tensor

from diffusion.registry import SCHEDULERS


def linear_betas(num_steps: int = 1000, beta_start: float = 1e-4, beta_end: float = 0.02) -> Tensor:
    """PixArt-alpha / IDDPM "linear" betas, rescaled by ``1000 / num_steps`` so any T spans the same SNR range.

    Returns: (num_steps,) float64.
    """
    scale = 1000.0 / num_steps
    return torch.from_numpy(np.linspace(scale * beta_start, scale * beta_end, num_steps, dtype=np.float64))


@SCHEDULERS.register_module()
class NoiseSchedule:
    """Forward process q(x_t | x_0) = N(sqrt(a_t) x_0, (1 - a_t) I) with a_t = prod_{s<=t} (1 - beta_s).

    Args:
        num_steps: number of training timesteps T.
        beta_start, beta_end: ends of the linear beta schedule (for T = 1000).
        betas: explicit (T,) betas; overrides the linear schedule.

    Tables (all (T,) float64): ``betas``, ``alphas``, ``alphas_cumprod``, ``alphas_cumprod_prev`` (1 prepended),
    ``posterior_variance``, ``posterior_log_variance_clipped`` (entry 0 replaced by entry 1, as in IDDPM),
    ``posterior_mean_coef1`` (multiplies x0) and ``posterior_mean_coef2`` (multiplies xt).
    """

    def __init__(
        self,
        num_steps: int = 1000,
        beta_start: float = 1e-4,
        beta_end: float = 0.02,
        betas: Tensor | None = None,
    ) -> None:
        betas = linear_betas(num_steps, beta_start, beta_end) if betas is None else torch.as_tensor(betas).double()
        if betas.ndim != 1 or not bool(((betas > 0) & (betas <= 1)).all()):
            raise ValueError("betas must be a 1-D tensor with values in (0, 1]")
        self.num_steps = len(betas)
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
