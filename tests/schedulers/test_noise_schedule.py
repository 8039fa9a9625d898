"""Noise schedule: linear betas, forward process and IDDPM posterior against closed forms and diffusers."""

import numpy as np
import pytest
import torch
from diffusers import DDPMScheduler

from diffusion.registry import SCHEDULERS
from diffusion.schedulers import NoiseSchedule, linear_betas


def test_linear_betas_match_pixart_definition():
    betas = linear_betas()
    assert betas.dtype == torch.float64 and betas.shape == (1000,)
    np.testing.assert_array_equal(betas.numpy(), np.linspace(1e-4, 0.02, 1000, dtype=np.float64))
    # Rescaled for shorter chains so the SNR range stays the same.
    np.testing.assert_allclose(linear_betas(100).numpy(), np.linspace(1e-3, 0.2, 100))


def test_registered_and_alphas_cumprod_match_diffusers():
    schedule = SCHEDULERS.build(dict(type="NoiseSchedule"))
    assert isinstance(schedule, NoiseSchedule) and schedule.num_train_timesteps == 1000
    ref = DDPMScheduler(beta_schedule="linear", beta_start=1e-4, beta_end=0.02).alphas_cumprod.double()
    torch.testing.assert_close(schedule.alphas_cumprod, ref, rtol=1e-5, atol=0)
    assert schedule.alphas_cumprod_prev[0] == 1.0
    torch.testing.assert_close(schedule.alphas_cumprod_prev[1:], schedule.alphas_cumprod[:-1])


def test_gather_shape_dtype():
    schedule = NoiseSchedule()
    x = torch.zeros(3, 4, 2, 2, dtype=torch.float32)
    out = schedule.gather(schedule.betas, torch.tensor([0, 10, 999]), x)
    assert out.shape == (3, 1, 1, 1) and out.dtype == torch.float32
    assert out.flatten().tolist() == pytest.approx([1e-4, schedule.betas[10].item(), 0.02], rel=1e-6)


def test_q_sample_matches_diffusers_add_noise_and_inverts():
    schedule = NoiseSchedule()
    gen = torch.Generator().manual_seed(0)
    x0 = torch.randn(4, 4, 8, 8, generator=gen, dtype=torch.float64)
    eps = torch.randn(4, 4, 8, 8, generator=gen, dtype=torch.float64)
    t = torch.tensor([0, 19, 500, 999])
    xt = schedule.q_sample(x0, t, eps)
    ref = DDPMScheduler(beta_schedule="linear", beta_start=1e-4, beta_end=0.02)
    ref.alphas_cumprod = schedule.alphas_cumprod.clone()
    torch.testing.assert_close(xt, ref.add_noise(x0, eps, t), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(schedule.x0_from_eps(xt, t, eps), x0, rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(schedule.eps_from_x0(xt, t, x0), eps, rtol=1e-9, atol=1e-9)


def test_posterior_matches_bayes_closed_form():
    schedule = NoiseSchedule()
    gen = torch.Generator().manual_seed(1)
    x0 = torch.randn(3, 2, 4, 4, generator=gen, dtype=torch.float64)
    xt = torch.randn(3, 2, 4, 4, generator=gen, dtype=torch.float64)
    t = torch.tensor([1, 400, 999])
    mean, log_var = schedule.q_posterior(x0, xt, t)
    for i, step in enumerate(t.tolist()):
        a_prev = schedule.alphas_cumprod[step - 1].item()
        beta, alpha = schedule.betas[step].item(), schedule.alphas[step].item()
        # Product of q(x_{t-1} | x_0) and q(x_t | x_{t-1}) as a Gaussian in x_{t-1}.
        precision = 1.0 / (1.0 - a_prev) + alpha / beta
        expected_mean = (np.sqrt(a_prev) * x0[i] / (1.0 - a_prev) + np.sqrt(alpha) * xt[i] / beta) / precision
        torch.testing.assert_close(mean[i], expected_mean, rtol=1e-9, atol=1e-9)
        assert log_var[i].item() == pytest.approx(np.log(1.0 / precision), rel=1e-9)
    # Clipping: t = 0 reuses the t = 1 variance instead of log(0).
    assert schedule.posterior_variance[0] == 0
    assert schedule.posterior_log_variance_clipped[0] == schedule.posterior_log_variance_clipped[1]


def test_rejects_bad_betas():
    with pytest.raises(ValueError, match="betas"):
        NoiseSchedule(betas=torch.tensor([0.1, 1.5]))
