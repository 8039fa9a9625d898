"""Diffusion processes, samplers and the LCM scheduler (PixArt-delta arXiv 2401.05252 §3; PixArt-alpha's IDDPM).

``DiffusionProcess.from_config(cfg)`` is where a config's process (T, betas, the LCM settings) is read, once.
"""

from diffusion.schedulers.gaussian_diffusion import (
    approx_standard_normal_cdf,
    discretized_gaussian_log_likelihood,
    hybrid_loss,
    learned_range_log_variance,
    mean_flat,
    normal_kl,
    vb_terms_bpd,
)
from diffusion.schedulers.lcm import LCM_SPACINGS, DDIMSolver, LCMScheduler, LCMSettings, boundary_scalings
from diffusion.schedulers.noise_schedule import BETA_SCHEDULES, NoiseSchedule, linear_betas, make_betas
from diffusion.schedulers.process import DiffusionProcess
from diffusion.schedulers.samplers import ddim_sample, ddim_timesteps, dpm_solver_pp_sample, dpm_solver_timesteps

__all__ = [
    "BETA_SCHEDULES",
    "DDIMSolver",
    "DiffusionProcess",
    "LCMScheduler",
    "LCMSettings",
    "LCM_SPACINGS",
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
    "make_betas",
    "mean_flat",
    "normal_kl",
    "vb_terms_bpd",
]
