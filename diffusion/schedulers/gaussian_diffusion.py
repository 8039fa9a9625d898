"""The PixArt-alpha training objective: IDDPM's hybrid loss (eps MSE + variational bound on a learned variance).

PixArt-delta (arXiv 2401.05252) trains the ControlNet-Transformer (§4.2) with exactly the loss of its PixArt-alpha
teacher: epsilon prediction plus a LEARNED_RANGE variance (Nichol & Dhariwal 2021, §3.1), where the VB term sees the
predicted mean through a stop-gradient ("frozen mean"), so it only trains the variance channels. PixArt uses
``LossType.MSE``, under which the VB term is added without the ``T / 1000`` rescale (equal anyway for T = 1000).
"""

import math

import torch
from torch import Tensor

from diffusion.schedulers.noise_schedule import NoiseSchedule


def mean_flat(x: Tensor) -> Tensor:
    """Mean over every dimension but the first: (B, ...) -> (B,)."""
    return x.mean(dim=tuple(range(1, x.ndim)))


def normal_kl(mean1: Tensor, logvar1: Tensor, mean2: Tensor, logvar2: Tensor) -> Tensor:
    """Elementwise KL(N(mean1, exp(logvar1)) || N(mean2, exp(logvar2))) in nats; arguments broadcast."""
    return 0.5 * (-1.0 + logvar2 - logvar1 + torch.exp(logvar1 - logvar2) + (mean1 - mean2) ** 2 * torch.exp(-logvar2))


def approx_standard_normal_cdf(x: Tensor) -> Tensor:
    """The tanh approximation of the standard normal CDF used by IDDPM (error < 2e-4)."""
    return 0.5 * (1.0 + torch.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x**3)))


def discretized_gaussian_log_likelihood(x: Tensor, means: Tensor, log_scales: Tensor, num_bins: int = 256) -> Tensor:
    """Elementwise log-probability (nats) of ``x`` in [-1, 1] under a Gaussian discretized into ``num_bins`` bins.

    The outermost bins extend to +-infinity. Args broadcast; ``log_scales`` is the log standard deviation.
    """
    half_bin = 1.0 / (num_bins - 1)
    centered = x - means
    inv_std = torch.exp(-log_scales)
    cdf_plus = approx_standard_normal_cdf(inv_std * (centered + half_bin))
    cdf_min = approx_standard_normal_cdf(inv_std * (centered - half_bin))
    log_cdf_plus = torch.log(cdf_plus.clamp(min=1e-12))
    log_one_minus_cdf_min = torch.log((1.0 - cdf_min).clamp(min=1e-12))
    log_cdf_delta = torch.log((cdf_plus - cdf_min).clamp(min=1e-12))
    edge = 1.0 - 1e-3
    return torch.where(x < -edge, log_cdf_plus, torch.where(x > edge, log_one_minus_cdf_min, log_cdf_delta))


def learned_range_log_variance(schedule: NoiseSchedule, v: Tensor, t: Tensor) -> Tensor:
    """LEARNED_RANGE: interpolate log-variance between the clipped posterior variance and beta_t.

    Args:
        v: (B,C,H,W) raw variance output in [-1, 1] (mapped to frac = (v + 1) / 2).
        t: (B,) timesteps.
    Returns: (B,C,H,W) model log-variance.
    """
    min_log = schedule.gather(schedule.posterior_log_variance_clipped, t, v)
    max_log = schedule.gather(schedule.betas.log(), t, v)
    frac = (v + 1.0) / 2.0
    return frac * max_log + (1.0 - frac) * min_log


def vb_terms_bpd(schedule: NoiseSchedule, eps: Tensor, v: Tensor, x0: Tensor, xt: Tensor, t: Tensor) -> Tensor:
    """Per-sample variational-bound term L_{t-1} in bits per dimension.

    KL(q(x_{t-1}|x_t,x_0) || p(x_{t-1}|x_t)) for t > 0, and the discretized decoder NLL -log p(x_0|x_1) at t == 0.

    Args:
        eps: (B,C,H,W) predicted noise (pass it detached for the frozen-mean trick).
        v: (B,C,H,W) raw variance output.
        x0, xt: (B,C,H,W) clean and noisy latents; t: (B,) timesteps.
    Returns: (B,).
    """
    true_mean, true_log_var = schedule.q_posterior(x0, xt, t)
    model_mean, _ = schedule.q_posterior(schedule.x0_from_eps(xt, t, eps), xt, t)
    model_log_var = learned_range_log_variance(schedule, v, t)
    kl = mean_flat(normal_kl(true_mean, true_log_var, model_mean, model_log_var)) / math.log(2.0)
    decoder_nll = -mean_flat(discretized_gaussian_log_likelihood(x0, model_mean, 0.5 * model_log_var)) / math.log(2.0)
    return torch.where(t == 0, decoder_nll, kl)


def hybrid_loss(
    schedule: NoiseSchedule,
    model_output: Tensor,
    x0: Tensor,
    xt: Tensor,
    t: Tensor,
    eps: Tensor,
    pred_sigma: bool = True,
    snr: bool = False,
    snr_switch_t: int = 249,
    snr_gamma: float | None = None,
    snr_floor: float | None = None,
) -> dict[str, Tensor]:
    """PixArt-alpha's per-sample training loss.

    Args:
        model_output: (B, 2C, H, W) when ``pred_sigma`` ([:C] eps, [C:] variance value v), else (B, C, H, W).
        x0, xt, eps: (B,C,H,W) clean latent, its noised version at ``t`` and the noise used.
        t: (B,) integer timesteps.
        pred_sigma: train the learned variance with the VB term; otherwise the loss is the eps MSE alone.
        snr: PixArt's optional "snr" target: for t <= ``snr_switch_t`` regress x0 (from the predicted eps) onto the
            clean latent instead of eps onto the noise.
        snr_gamma: Min-SNR-gamma weighting (Hang et al. 2023) of the MSE term: ``min(SNR_t, gamma) / SNR_t`` with
            ``SNR_t = alpha_bar_t / (1 - alpha_bar_t)``, which lowers the weight of the low-noise steps; None (PixArt)
            weighs every step by 1. The VB term is never reweighted.
        snr_floor: the opposite end: weight ``max(SNR_t, floor) / SNR_t``, which turns the eps MSE into an x0 MSE
            (times ``floor``) where SNR_t < floor. The eps MSE of a high-noise step is its x0 error times SNR_t, so
            without it the steps that decide the composition contribute almost nothing to the gradient.
    Returns: {"loss", "mse", "vb"}, each (B,); "mse" is unweighted; "vb" is zeros without ``pred_sigma``.
    """
    channels = x0.shape[1]
    if pred_sigma:
        if model_output.shape[1] != 2 * channels:
            raise ValueError(f"pred_sigma needs {2 * channels} output channels, got {model_output.shape[1]}")
        pred_eps, v = model_output[:, :channels], model_output[:, channels:]
    else:
        if model_output.shape[1] != channels:
            raise ValueError(f"expected {channels} output channels, got {model_output.shape[1]}")
        pred_eps = model_output
    if snr:
        early = (t <= snr_switch_t).reshape(-1, *([1] * (x0.ndim - 1)))
        target = torch.where(early, x0, eps)
        output = torch.where(early, schedule.x0_from_eps(xt, t, pred_eps), pred_eps)
    else:
        target, output = eps, pred_eps
    mse = mean_flat((target - output) ** 2)
    weighted = mse
    if snr_gamma is not None or snr_floor is not None:
        snr_t = schedule.gather(schedule.alphas_cumprod / (1.0 - schedule.alphas_cumprod), t, mse)
        weighted = mse * snr_t.clamp(min=snr_floor, max=snr_gamma) / snr_t
    vb = vb_terms_bpd(schedule, pred_eps.detach(), v, x0, xt, t) if pred_sigma else torch.zeros_like(mse)
    return {"loss": weighted + vb, "mse": mse, "vb": vb}
