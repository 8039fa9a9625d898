"""DiffusionLoss: the method contract (docs/design.md) and the hybrid loss it computes, with a stand-in model."""

import pytest
import torch
from torch import nn

from diffusion.methods import DiffusionLoss
from diffusion.registry import METHODS
from diffusion.schedulers import hybrid_loss


class StandIn(nn.Module):
    """Minimal model with the PixArt call signature; records what it was called with."""

    def __init__(self, pred_sigma: bool = True, channels: int = 4):
        super().__init__()
        self.pred_sigma = pred_sigma
        self.proj = nn.Conv2d(channels, channels * (2 if pred_sigma else 1), 1)
        self.seen = {}

    def forward(self, x, timestep, y, mask=None, data_info=None, c=None):
        self.seen = dict(x=x, t=timestep, y=y, mask=mask, data_info=data_info, c=c)
        out = self.proj(x + (0 if c is None else c)) + y.mean()
        return torch.tanh(out) if self.pred_sigma else out


def _batch(with_c=False):
    gen = torch.Generator().manual_seed(0)
    batch = dict(
        x0=torch.randn(3, 4, 4, 4, generator=gen),
        y=torch.randn(3, 1, 5, 8, generator=gen),
        y_mask=torch.ones(3, 5, dtype=torch.long),
        data_info={"img_hw": torch.full((3, 2), 32.0), "aspect_ratio": torch.ones(3, 1)},
        prompt=["a", "b", "c"],
    )
    if with_c:
        batch["c"] = torch.randn(3, 4, 4, 4, generator=gen)
    return batch


def test_loss_equals_hybrid_loss_on_the_drawn_noise():
    model = StandIn()
    method = METHODS.build(dict(type="DiffusionLoss", model=model))
    assert isinstance(method, DiffusionLoss) and len(list(method.parameters())) == 0
    batch = _batch()
    torch.manual_seed(123)
    loss, logs = method(model, batch)
    seen = model.seen
    # Same draws from the global RNG: t ~ U{0..999}, then eps ~ N(0, I).
    torch.manual_seed(123)
    t = torch.randint(0, 1000, (3,))
    eps = torch.randn_like(batch["x0"])
    assert torch.equal(seen["t"], t) and seen["t"].dtype == torch.int64
    xt = method.schedule.q_sample(batch["x0"], t, eps)
    torch.testing.assert_close(seen["x"], xt)
    assert seen["y"] is batch["y"] and seen["mask"] is batch["y_mask"] and seen["data_info"] is batch["data_info"]
    assert seen["c"] is None
    terms = hybrid_loss(method.schedule, model(xt, t, batch["y"]), batch["x0"], xt, t, eps)
    assert loss.ndim == 0 and loss.item() == pytest.approx(terms["loss"].mean().item(), rel=1e-6)
    assert set(logs) == {"mse", "vb"} and not logs["mse"].requires_grad
    assert loss.item() == pytest.approx((logs["mse"] + logs["vb"]).item(), rel=1e-6)
    loss.backward()
    assert model.proj.weight.grad is not None and model.proj.weight.grad.abs().sum() > 0


def test_control_latent_is_forwarded():
    model = StandIn()
    method = DiffusionLoss(model)
    batch = _batch(with_c=True)
    method(model, batch)
    assert model.seen["c"] is batch["c"]


def test_mse_only_and_pred_sigma_mismatch():
    model = StandIn(pred_sigma=False)
    method = DiffusionLoss(model, pred_sigma=False)
    loss, logs = method(model, _batch())
    assert logs["vb"].item() == 0 and loss.item() == pytest.approx(logs["mse"].item())
    with pytest.raises(ValueError, match="pred_sigma"):
        DiffusionLoss(model, pred_sigma=True)


def test_default_hooks():
    method = DiffusionLoss(StandIn(), sampler=dict(type="ddim", num_steps=5))
    assert method.extra_state() == {}
    method.load_extra_state({})
    with pytest.raises(ValueError, match="no extra state"):
        method.load_extra_state({"ema": torch.zeros(1)})
    assert method.after_optimizer_step(StandIn()) is None
    assert method.sampler_defaults() == dict(type="ddim", num_steps=5)
    assert DiffusionLoss(StandIn()).sampler_defaults()["name"] == "dpm"


def test_timesteps_uniform_by_default_and_high_noise_mixture():
    uniform = DiffusionLoss(StandIn())
    torch.manual_seed(0)
    t = uniform.sample_timesteps(4000, torch.device("cpu"))
    torch.manual_seed(0)
    torch.testing.assert_close(t, torch.randint(0, 1000, (4000,)))  # PixArt's draw, unchanged
    mixed = DiffusionLoss(StandIn(), high_noise_prob=0.6, high_noise_from=700)
    t = mixed.sample_timesteps(20000, torch.device("cpu"))
    assert 0 <= int(t.min()) and int(t.max()) <= 999
    # P(t >= 700) = 0.6 + 0.4 * 0.3 = 0.72
    assert abs((t >= 700).float().mean().item() - 0.72) < 0.02
    assert (t < 100).any()  # low-noise steps are still trained
    with pytest.raises(ValueError, match="high_noise_prob"):
        DiffusionLoss(StandIn(), high_noise_prob=1.5)
    with pytest.raises(ValueError, match="snr_gamma"):
        DiffusionLoss(StandIn(), snr_gamma=0.0)
    with pytest.raises(ValueError, match="snr_floor"):
        DiffusionLoss(StandIn(), snr_floor=1.0, snr_gamma=0.5)


def test_the_configured_schedule_and_a_generator():
    """T and the betas come from the schedule the method is given (the config's ``diffusion`` section): t ~ U{0..T-1}
    and xt = q_sample on that schedule; a given generator makes the draws (t, then eps) alone."""
    from diffusion.schedulers import NoiseSchedule

    model = StandIn()
    schedule = NoiseSchedule(num_train_timesteps=100, beta_end=0.012)
    method = DiffusionLoss(model, schedule=schedule, generator=torch.Generator().manual_seed(4))
    assert method.schedule is schedule
    batch = _batch()
    before = torch.get_rng_state()
    method(model, batch)
    assert torch.equal(torch.get_rng_state(), before)
    g = torch.Generator().manual_seed(4)
    t = torch.randint(0, 100, (3,), generator=g)
    eps = torch.randn(batch["x0"].shape, generator=g)
    assert torch.equal(model.seen["t"], t)
    betas = torch.linspace(1e-3, 0.12, 100, dtype=torch.float64)  # IDDPM's linear betas x 1000 / T
    a = torch.cumprod(1 - betas, 0)[t].float().view(-1, 1, 1, 1)
    torch.testing.assert_close(model.seen["x"], a.sqrt() * batch["x0"] + (1 - a).sqrt() * eps)
    t = DiffusionLoss(model, schedule=schedule).sample_timesteps(5000, torch.device("cpu"))
    assert int(t.max()) == 99
    DiffusionLoss(model, schedule=schedule, high_noise_from=700)  # unused without high_noise_prob
    with pytest.raises(ValueError, match="num_train_timesteps"):
        DiffusionLoss(model, schedule=schedule, high_noise_prob=0.5, high_noise_from=700)
    with pytest.raises(TypeError, match="'diffusion'"):
        DiffusionLoss(model, schedule=dict(num_train_timesteps=100))
