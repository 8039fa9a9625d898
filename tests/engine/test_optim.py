"""Learning-rate schedule and batch-size scaling (diffusers' warmup schedules, official ``auto_lr`` rule)."""

import math

import pytest
import torch
from diffusers.optimization import get_constant_schedule_with_warmup, get_cosine_schedule_with_warmup

from diffusion.engine.optim import build_lr_scheduler, build_optimizer, scaled_lr


def _lrs(scheduler, optimizer, steps):
    out = []
    for _ in range(steps):
        out.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    return out


@pytest.mark.parametrize("kind", ["constant", "cosine"])
def test_schedule_matches_diffusers(kind):
    def make():
        return torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.1)

    ours_opt, ref_opt = make(), make()
    ours = build_lr_scheduler(ours_opt, dict(type=kind, warmup_steps=3, min_lr_ratio=0.0), total_steps=10)
    if kind == "constant":
        ref = get_constant_schedule_with_warmup(ref_opt, num_warmup_steps=3)
    else:
        ref = get_cosine_schedule_with_warmup(ref_opt, num_warmup_steps=3, num_training_steps=10)
    assert _lrs(ours, ours_opt, 11) == pytest.approx(_lrs(ref, ref_opt, 11), abs=1e-12)  # up to total_steps


def test_cosine_floor():
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    lrs = _lrs(build_lr_scheduler(opt, dict(type="cosine", warmup_steps=0, min_lr_ratio=0.2), 4), opt, 6)
    assert lrs[0] == 1.0 and lrs[2] == pytest.approx(0.6) and lrs[4:] == pytest.approx([0.2, 0.2])


def test_auto_lr_rules():
    assert scaled_lr(1e-4, 64, None) == 1e-4
    assert scaled_lr(1e-4, 64, "linear") == pytest.approx(2.5e-5)
    assert scaled_lr(2e-5, 24, "sqrt") == pytest.approx(2e-5 * math.sqrt(24 / 256))


def test_optimizer_rejects_unknown_key_by_name():
    with pytest.raises(TypeError, match="betas2"):
        build_optimizer([torch.nn.Parameter(torch.zeros(1))], dict(type="AdamW", lr=1.0, betas2=0.9), lr=1.0)


def test_fused_adamw_only_on_cuda_and_switchable():
    params = [torch.nn.Parameter(torch.randn(3))]
    cpu = build_optimizer(params, dict(type="AdamW", lr=1e-3), 1e-3)
    assert not cpu.defaults.get("fused")  # the fused kernel needs CUDA tensors
    off = build_optimizer(params, dict(type="AdamW", lr=1e-3, fused=False), 1e-3)
    assert off.defaults["fused"] is False
    if torch.cuda.is_available():
        cuda = [torch.nn.Parameter(torch.randn(3, device="cuda"))]
        assert build_optimizer(cuda, dict(type="AdamW", lr=1e-3), 1e-3).defaults["fused"] is True
