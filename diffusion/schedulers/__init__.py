"""Diffusion processes, samplers and the LCM scheduler (PixArt-delta arXiv 2401.05252 §3; PixArt-alpha's IDDPM)."""

from diffusion.schedulers.gaussian_diffusion import (
    approx_standard_normal_cdf,
    discretized_gaussian_log_likelihood,
    hybrid_loss,
    learned_range_log_variance,
    mean_flat,
    normal_kl,
    vb_terms_bpd,
)
from diffusion.schedulers.lcm import DDIMSolver, LCMScheduler, boundary_scalings
from diffusion.schedulers.noise_schedule import NoiseSchedule, linear_betas
from diffusion.schedulers.samplers import ddim_sample, ddim_timesteps, dpm_solver_pp_sample, dpm_solver_timesteps

__all__ = [
    "DDIMSolver",
    "LCMScheduler",
    "NoiseSchedule",
    "approx_standard_normal_cdf",
    "boundary_scalings",
    "ddim_sample",
    "ddim_timesteps",
    "discretized_gaussian_log_likelihood",
    "dpm_solver_pp_sample",
    "dpm_solver_timesteps",
    "hybrid_loss",
    "learned_range_log_variance",
    "linear_betas",
    "mean_flat",
    "normal_kl",
    "vb_terms_bpd",
]
