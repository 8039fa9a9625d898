"""DiffusionProcess: read once from a config, equal to what each part builds, and exported to diffusers' scheduler
configs that reproduce our schedule and consistency function (diffusers' own classes as the reference)."""

import numpy as np
import pytest
import torch
from diffusers import DDPMScheduler, DPMSolverMultistepScheduler
from diffusers import LCMScheduler as DiffusersLCMScheduler

from diffusion.export import dpm_scheduler_config, lcm_scheduler_config, lcm_timesteps
from diffusion.schedulers import DiffusionProcess, LCMSettings, NoiseSchedule, boundary_scalings

PROCESSES = {
    "pixart": DiffusionProcess(),
    "T=500": DiffusionProcess(NoiseSchedule(500), LCMSettings(num_ddim_steps=25, timestep_scaling=1.0)),
    "scaled_linear": DiffusionProcess(NoiseSchedule(1000, "scaled_linear", 0.00085, 0.012), LCMSettings(40)),
}


def test_from_config_defaults_and_sections():
    assert DiffusionProcess.from_config({}) == DiffusionProcess()
    assert DiffusionProcess.from_config({"method": {"type": "DiffusionLoss"}}) == DiffusionProcess()
    cfg = {
        "diffusion": {"num_train_timesteps": 500, "beta_schedule": "linear", "beta_start": 1e-4, "beta_end": 0.02},
        "method": {"type": "LCMDistillation", "num_ddim_steps": 25, "timestep_scaling": 1.0, "w": 3.0},
    }
    assert DiffusionProcess.from_config(cfg) == PROCESSES["T=500"]
    assert DiffusionProcess.from_config(cfg) != DiffusionProcess()


def test_betas_of_each_schedule():
    """'linear' is IDDPM's (rescaled by 1000 / T, PixArt's); 'scaled_linear' is diffusers' / Stable Diffusion's."""
    np.testing.assert_allclose(NoiseSchedule(250).betas.numpy(), np.linspace(4e-4, 0.08, 250))
    ref = DDPMScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012).betas.double()
    torch.testing.assert_close(PROCESSES["scaled_linear"].schedule.betas, ref, rtol=1e-6, atol=0)
    with pytest.raises(ValueError, match="beta_end"):
        NoiseSchedule(10)  # 0.02 x 1000 / 10 = 2: not a probability


@pytest.mark.parametrize("name", list(PROCESSES))
def test_exported_lcm_scheduler_config_samples_like_our_lcm_scheduler(name):
    process = PROCESSES[name]
    theirs = DiffusersLCMScheduler.from_config(lcm_scheduler_config(process))
    ours = process.lcm_scheduler("diffusers")
    torch.testing.assert_close(theirs.alphas_cumprod.double(), process.schedule.alphas_cumprod, rtol=1e-5, atol=0)
    for n in (1, 2, 4, 8):
        theirs.set_timesteps(n)
        assert theirs.timesteps.tolist() == ours.set_timesteps(n).tolist()
        assert lcm_timesteps(n, "diffusers", process) == theirs.timesteps.tolist()
    for t in (0, 19, 259, 499):
        c_skip, c_out = theirs.get_scalings_for_boundary_condition_discrete(torch.tensor(t))
        want = boundary_scalings(t, process.lcm.sigma_data, process.lcm.timestep_scaling)
        assert c_skip.item() == pytest.approx(want[0].item(), rel=1e-6)
        assert c_out.item() == pytest.approx(want[1].item(), rel=1e-6)
    dpm = DPMSolverMultistepScheduler.from_config(dpm_scheduler_config(process))
    torch.testing.assert_close(dpm.alphas_cumprod.double(), process.schedule.alphas_cumprod, rtol=1e-5, atol=0)


def test_a_sigma_data_diffusers_cannot_express_is_refused():
    with pytest.raises(ValueError, match="sigma_data = 1.0.*fixes sigma_data = 0.5"):
        lcm_scheduler_config(DiffusionProcess(lcm=LCMSettings(sigma_data=1.0)))
    assert dpm_scheduler_config(DiffusionProcess(lcm=LCMSettings(sigma_data=1.0)))  # a teacher's: no LCM settings


def test_default_exports_are_pixarts():
    """Without a process: PixArt-alpha's linear 1e-4 -> 0.02 over 1000 steps, 50 original steps, scaling 10."""
    config = lcm_scheduler_config()
    assert (config["num_train_timesteps"], config["beta_schedule"], config["beta_start"], config["beta_end"]) == (
        1000,
        "linear",
        1e-4,
        0.02,
    )
    assert (config["original_inference_steps"], config["timestep_scaling"]) == (50, 10.0)
    assert lcm_timesteps(4) == [999, 759, 519, 279]
