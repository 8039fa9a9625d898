"""EMA of the trained weights: hand computation, frozen parameters and buffers, half-life, state round trip."""

import math

import pytest
import torch
from torch import nn

from diffusion.engine.ema import EMA


def _net() -> nn.Module:
    net = nn.Sequential(nn.Linear(3, 2), nn.BatchNorm1d(2))
    net[1].weight.requires_grad_(False)
    return net


def test_update_matches_hand_computation():
    net, rate = _net(), 0.9
    ema = EMA(net, rate)
    w0 = net[0].weight.detach().clone()
    with torch.no_grad():
        net[0].weight.add_(1.0)
        net[1].running_mean.fill_(5.0)
    ema.update(net)
    w1 = net[0].weight.detach().clone()
    with torch.no_grad():
        net[0].weight.mul_(-2.0)
    ema.update(net)
    w2 = net[0].weight.detach()
    expected = rate * (rate * w0 + (1 - rate) * w1) + (1 - rate) * w2
    torch.testing.assert_close(ema.shadow["0.weight"], expected, rtol=0, atol=1e-6)
    assert torch.equal(ema.shadow["1.running_mean"], torch.full((2,), 5.0))  # buffers are copied
    assert torch.equal(ema.shadow["1.weight"], net[1].weight)  # frozen parameters follow the module


def test_shadow_is_float32_and_copy_to_casts():
    net = _net().to(torch.bfloat16)
    ema = EMA(net, 0.5)
    assert all(t.dtype == torch.float32 for t in ema.shadow.values())
    target = _net().to(torch.bfloat16)
    ema.copy_to(target)
    torch.testing.assert_close(target[0].weight, net[0].weight)
    assert target[0].weight.dtype == torch.bfloat16


def test_state_dict_round_trip_and_key_check():
    net = _net()
    ema = EMA(net, 0.99)
    other = EMA(_net(), 0.99)
    other.load_state_dict(ema.state_dict())
    for name in ema.shadow:
        assert torch.equal(other.shadow[name], ema.shadow[name])
    with pytest.raises(KeyError, match="0.bias"):
        other.load_state_dict({k: v for k, v in ema.state_dict().items() if k != "0.bias"})


def test_halflife_rate_halves_weight():
    rate = EMA.rate_from_halflife(10)
    assert math.isclose(rate**10, 0.5, rel_tol=1e-12)
    with pytest.raises(ValueError):
        EMA(_net(), 1.0)


def test_warmup_rate_follows_update_count():
    """r_n = min(rate, (1 + n) / (10 + n)): the first update moves the shadow 90% of the way."""
    net = nn.Linear(2, 2)
    ema = EMA(net, 0.999)
    w0 = net.weight.detach().clone()
    with torch.no_grad():
        net.weight.add_(1.0)
    ema.update(net, num_updates=0)
    torch.testing.assert_close(ema.shadow["weight"], 0.1 * w0 + 0.9 * net.weight.detach(), rtol=0, atol=1e-6)
