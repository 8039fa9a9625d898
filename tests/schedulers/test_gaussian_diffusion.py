"""IDDPM hybrid loss: KL / decoder-NLL helpers against closed forms and scipy, frozen-mean gradients, invariants."""

import math

import numpy as np
import pytest
import torch
from scipy import integrate, stats

from diffusion.schedulers import (
    NoiseSchedule,
    approx_standard_normal_cdf,
    discretized_gaussian_log_likelihood,
    hybrid_loss,
    learned_range_log_variance,
    normal_kl,
)


@pytest.mark.parametrize("m1,lv1,m2,lv2", [(0.0, 0.0, 0.0, 0.0), (0.3, -1.0, -0.2, 0.5), (1.0, 0.7, 0.1, -2.0)])
def test_normal_kl_matches_numerical_integral(m1, lv1, m2, lv2):
    p, q = stats.norm(m1, math.exp(0.5 * lv1)), stats.norm(m2, math.exp(0.5 * lv2))
    expected, _ = integrate.quad(lambda x: p.pdf(x) * (p.logpdf(x) - q.logpdf(x)), -30, 30, limit=200)
    got = normal_kl(*(torch.tensor(v, dtype=torch.float64) for v in (m1, lv1, m2, lv2)))
    assert got.item() == pytest.approx(expected, abs=1e-8)


def test_approx_cdf_close_to_scipy():
    x = torch.linspace(-6, 6, 1001, dtype=torch.float64)
    np.testing.assert_allclose(approx_standard_normal_cdf(x).numpy(), stats.norm.cdf(x.numpy()), atol=2e-4)


def test_discretized_log_likelihood_against_scipy_and_normalised():
    bins = torch.linspace(-1, 1, 256, dtype=torch.float64)
    mean, log_scale = torch.tensor(0.13, dtype=torch.float64), torch.tensor(math.log(0.2), dtype=torch.float64)
    log_p = discretized_gaussian_log_likelihood(bins, mean, log_scale)
    # Exact bin masses with the true CDF; the outer bins extend to +-infinity.
    dist = stats.norm(0.13, 0.2)
    upper = np.append(bins.numpy()[:-1] + 1 / 255, np.inf)
    lower = np.insert(bins.numpy()[1:] - 1 / 255, 0, -np.inf)
    expected = dist.cdf(upper) - dist.cdf(lower)
    # Each bin mass is a difference of two approximate CDF values, each within 2e-4 of the truth.
    np.testing.assert_allclose(log_p.exp().numpy(), expected, atol=4e-4, rtol=0)
    peak = expected.argmax()
    assert log_p[peak].item() == pytest.approx(np.log(expected[peak]), abs=1e-3)
    # The bins tile the real line, so the masses sum to one.
    assert log_p.exp().sum().item() == pytest.approx(1.0, abs=1e-9)


def test_learned_range_endpoints():
    schedule = NoiseSchedule()
    t = torch.tensor([0, 5, 999])
    ones = torch.ones(3, 1, 1, 1, dtype=torch.float64)
    lo = learned_range_log_variance(schedule, -ones, t).flatten()
    hi = learned_range_log_variance(schedule, ones, t).flatten()
    torch.testing.assert_close(lo, schedule.posterior_log_variance_clipped[t])
    torch.testing.assert_close(hi, schedule.betas[t].log())


def _setup(t, seed=0, channels=4):
    schedule = NoiseSchedule()
    gen = torch.Generator().manual_seed(seed)
    shape = (len(t), channels, 4, 4)
    x0 = torch.rand(shape, generator=gen, dtype=torch.float64) * 2 - 1
    eps = torch.randn(shape, generator=gen, dtype=torch.float64)
    return schedule, x0, eps, schedule.q_sample(x0, t, eps)


def test_perfect_model_has_zero_loss_except_decoder():
    t = torch.tensor([0, 1, 500, 999])
    schedule, x0, eps, xt = _setup(t)
    v = -torch.ones_like(eps)  # model variance == clipped posterior variance
    terms = hybrid_loss(schedule, torch.cat([eps, v], 1), x0, xt, t, eps)
    assert set(terms) == {"loss", "mse", "vb"} and all(v.shape == (4,) for v in terms.values())
    torch.testing.assert_close(terms["mse"], torch.zeros(4, dtype=torch.float64))
    torch.testing.assert_close(terms["vb"][1:], torch.zeros(3, dtype=torch.float64), atol=1e-10, rtol=0)
    # t == 0: discretized decoder NLL of x0 around the true posterior mean, in bits.
    mean, log_var = schedule.q_posterior(x0[:1], xt[:1], t[:1])
    nll = -discretized_gaussian_log_likelihood(x0[:1], mean, 0.5 * log_var).mean() / math.log(2)
    assert terms["vb"][0].item() == pytest.approx(nll.item(), rel=1e-12) and nll > 0
    torch.testing.assert_close(terms["loss"], terms["mse"] + terms["vb"])


def test_vb_matches_closed_form_kl_for_wrong_model():
    t = torch.tensor([10, 700])
    schedule, x0, eps, xt = _setup(t, seed=3)
    pred_eps, v = eps + 0.1, torch.full_like(eps, 0.4)
    terms = hybrid_loss(schedule, torch.cat([pred_eps, v], 1), x0, xt, t, eps)
    for i, step in enumerate(t.tolist()):
        coef1, coef2 = schedule.posterior_mean_coef1[step], schedule.posterior_mean_coef2[step]
        a = schedule.alphas_cumprod[step]
        true_mean = coef1 * x0[i] + coef2 * xt[i]
        model_x0 = (xt[i] - (1 - a).sqrt() * pred_eps[i]) / a.sqrt()
        model_mean = coef1 * model_x0 + coef2 * xt[i]
        var_p = schedule.posterior_variance[step]
        var_q = torch.exp(0.7 * schedule.betas[step].log() + 0.3 * var_p.log())
        kl = 0.5 * (var_p / var_q - 1 + (var_q / var_p).log() + (true_mean - model_mean) ** 2 / var_q)
        assert terms["vb"][i].item() == pytest.approx((kl.mean() / math.log(2)).item(), rel=1e-9)
    torch.testing.assert_close(terms["mse"], torch.full((2,), 0.01, dtype=torch.float64))


def test_frozen_mean_gradients():
    t = torch.tensor([0, 3, 300, 900])
    schedule, x0, eps, xt = _setup(t, seed=1)
    gen = torch.Generator().manual_seed(5)
    out = torch.randn(4, 8, 4, 4, generator=gen, dtype=torch.float64).requires_grad_(True)
    hybrid_loss(schedule, out, x0, xt, t, eps)["loss"].sum().backward()
    # The eps channels see only the MSE gradient; the VB term reaches only the variance channels.
    expected = 2 * (out[:, :4] - eps).detach() / out[0, :4].numel()
    torch.testing.assert_close(out.grad[:, :4], expected)
    assert out.grad[:, 4:].abs().sum() > 0


def test_pred_sigma_false_and_channel_checks():
    t = torch.tensor([5, 600])
    schedule, x0, eps, xt = _setup(t)
    pred = eps + 0.2
    terms = hybrid_loss(schedule, pred, x0, xt, t, eps, pred_sigma=False)
    torch.testing.assert_close(terms["loss"], terms["mse"])
    torch.testing.assert_close(terms["mse"], torch.full((2,), 0.04, dtype=torch.float64))
    assert not terms["vb"].any()
    with pytest.raises(ValueError, match="8 output channels"):
        hybrid_loss(schedule, pred, x0, xt, t, eps)
    with pytest.raises(ValueError, match="4 output channels"):
        hybrid_loss(schedule, torch.cat([pred, pred], 1), x0, xt, t, eps, pred_sigma=False)


def test_snr_target_switches_to_x0_early():
    t = torch.tensor([100, 249, 250, 900])
    schedule, x0, eps, xt = _setup(t, seed=2)
    pred = eps + 0.1
    terms = hybrid_loss(schedule, pred, x0, xt, t, eps, pred_sigma=False, snr=True)
    x0_err = ((schedule.x0_from_eps(xt, t, pred) - x0) ** 2).mean(dim=(1, 2, 3))
    torch.testing.assert_close(terms["mse"][:2], x0_err[:2])
    torch.testing.assert_close(terms["mse"][2:], torch.full((2,), 0.01, dtype=torch.float64))


def test_min_snr_gamma_weights_only_low_noise_steps():
    t = torch.tensor([10, 100, 500, 900])
    schedule, x0, eps, xt = _setup(t, seed=3)
    pred = eps + 0.1
    plain = hybrid_loss(schedule, pred, x0, xt, t, eps, pred_sigma=False)
    gamma = 5.0
    weighted = hybrid_loss(schedule, pred, x0, xt, t, eps, pred_sigma=False, snr_gamma=gamma)
    snr = schedule.alphas_cumprod[t] / (1 - schedule.alphas_cumprod[t])
    expected = plain["mse"] * torch.minimum(snr, torch.tensor(gamma, dtype=snr.dtype)) / snr
    torch.testing.assert_close(weighted["loss"], expected)
    torch.testing.assert_close(weighted["mse"], plain["mse"])  # the logged MSE stays unweighted
    assert bool((snr[:2] > gamma).all()) and bool((snr[2:] < gamma).all())
    torch.testing.assert_close(weighted["loss"][2:], plain["loss"][2:])
    assert bool((weighted["loss"][:2] < plain["loss"][:2]).all())


def test_snr_floor_turns_high_noise_eps_mse_into_x0_mse():
    t = torch.tensor([100, 500, 800, 999])
    schedule, x0, eps, xt = _setup(t, seed=4)
    pred = eps + 0.1
    floor = 0.02
    terms = hybrid_loss(schedule, pred, x0, xt, t, eps, pred_sigma=False, snr_floor=floor)
    snr = schedule.alphas_cumprod[t] / (1 - schedule.alphas_cumprod[t])
    low, high = snr >= floor, snr < floor
    assert bool(low[:2].all()) and bool(high[2:].all())
    torch.testing.assert_close(terms["loss"][low], terms["mse"][low])  # unchanged above the floor
    x0_err = ((schedule.x0_from_eps(xt, t, pred) - x0) ** 2).mean(dim=(1, 2, 3))
    torch.testing.assert_close(terms["loss"][high], floor * x0_err[high])  # x0 MSE (times the floor) below it
