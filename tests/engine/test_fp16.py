"""fp16 as on the paper's V100s (PixArt-δ §3.3; the official code trains with accelerate's fp16 GradScaler): the
GradScaler's overflow steps (its normal calibration of the loss scale) are reported and do not count as divergence;
a non-finite loss still stops the run after ``train.max_nan_steps``, and so does a loss scale that collapses below
``train.loss_scale_min``; resume restores the scale. CPU fp16 autocast with ``torch.amp.GradScaler("cpu")``."""

import json
import math

import pytest
import torch

from diffusion.engine import Trainer, find_latest
from tests.engine.standins import tiny_config

HIGH = 2.0**40  # fp16 gradients overflow at this scale: the scaler halves it once per step until they fit


def _metrics(work_dir) -> list[dict]:
    return [json.loads(line) for line in (work_dir / "metrics.jsonl").read_text().splitlines()]


def _fp16(**train) -> dict:
    return tiny_config(train=dict(mixed_precision="fp16", **train))


def test_a_run_started_with_a_very_high_loss_scale_finishes(tmp_path):
    """Overflow steps of the scaler's calibration, many in a row (here more than max_nan_steps), are not
    divergence: the run does its 4 real steps. Like any skipped step, an overflow step advances nothing (weights,
    lr schedule, EMA, method state, step counter); it is counted and the scale is logged."""
    trainer = Trainer(_fp16(max_steps=4, loss_scale_init=HIGH, max_nan_steps=2), tmp_path / "high")
    trainer.train()
    state = trainer.state
    assert state.step == 4 and state.nan_total == 0
    assert state.overflow_total >= 10  # 2^40 down to where the tiny net's fp16 gradients fit
    assert trainer.method.steps.item() == 4 and trainer.lr_scheduler.last_epoch == 4
    assert trainer.optimizer.state[trainer.params[0]]["step"].item() == 4
    assert all(torch.isfinite(p).all() for p in trainer.model.parameters())
    scale = trainer.scaler.get_scale()
    assert scale == HIGH / 2**state.overflow_total
    metrics = _metrics(tmp_path / "high")
    assert [m["step"] for m in metrics] == [1, 2, 3, 4]
    assert metrics[-1]["loss_scale"] == scale and metrics[-1]["overflow_skipped"] == state.overflow_total
    assert all(m["nan_skipped"] == 0 and math.isfinite(m["loss"]) for m in metrics)
    Trainer(_fp16(max_steps=4), tmp_path / "clean").train()
    assert [m["lr"] for m in metrics] == [m["lr"] for m in _metrics(tmp_path / "clean")]
    log = (tmp_path / "high" / "train.log").read_text()
    assert "fp16 gradient overflow" in log and f"loss scale {HIGH:g} -> {HIGH / 2:g}" in log
    assert "WARNING" not in log  # calibration is normal: no warning


def test_a_nan_loss_in_fp16_still_stops_after_max_nan_steps(tmp_path):
    """The loss is checked before scaling: a real NaN loss is divergence, whatever the scaler does."""
    cfg = _fp16(max_nan_steps=3)
    cfg["method"] = dict(type="EngineMSELoss", nan_calls=tuple(range(4, 100)))
    with pytest.raises(FloatingPointError, match=r"3 consecutive.*non-finite loss.*stopping at step 4"):
        Trainer(cfg, tmp_path).train()
    assert find_latest(tmp_path).name == "step_0000003"


def test_a_collapsing_loss_scale_stops_the_run_naming_the_step(tmp_path):
    """Gradients that overflow at any scale (a finite loss, infinite gradients from step 5 on): the scale halves
    each step, 16 -> 0.5, and the run stops once it is below train.loss_scale_min, naming the step and the key."""
    cfg = _fp16(loss_scale_init=16.0, loss_scale_min=1.0, max_nan_steps=2)
    cfg["method"] = dict(type="EngineMSELoss", inf_grad_calls=tuple(range(4, 100)))
    with pytest.raises(FloatingPointError, match=r"loss scale fell to 0\.5.*loss_scale_min=1.*stopping at step 4"):
        Trainer(cfg, tmp_path).train()
    assert find_latest(tmp_path).name == "step_0000003"
    resumed = Trainer(cfg, tmp_path, resume="auto")
    assert resumed.state.step == 3 and resumed.scaler.get_scale() == 16.0


@pytest.mark.parametrize(
    ("train", "name"),
    [(dict(loss_scale_init=0.0), "loss_scale_init"), (dict(loss_scale_min=-1.0), "loss_scale_min")],
)
def test_bad_loss_scale_keys_are_named(tmp_path, train, name):
    with pytest.raises(KeyError, match=name):
        Trainer(_fp16(**train), tmp_path)


def test_resume_restores_the_loss_scale(tmp_path):
    """Killed after the step-3 checkpoint and resumed: the same losses, scales, overflow counts and weights as the
    uninterrupted run (a resumed run that restarted from loss_scale_init would calibrate again: other steps)."""
    cfg = _fp16(loss_scale_init=HIGH)
    full = Trainer(cfg, tmp_path / "full")
    full.train()
    step3 = tmp_path / "full" / "checkpoints" / "step_0000003"
    saved = torch.load(step3 / "training_state.pt", weights_only=True)
    assert saved["scaler"]["scale"] < HIGH and saved["overflow_total"] > 0
    resumed = Trainer(cfg, tmp_path / "resumed", resume=str(step3))
    assert resumed.scaler.get_scale() == saved["scaler"]["scale"]
    resumed.train()
    ref, got = _metrics(tmp_path / "full"), _metrics(tmp_path / "resumed")
    assert [m["step"] for m in got] == [4, 5, 6]
    for key in ("loss", "grad_norm", "lr", "loss_scale", "overflow_skipped"):
        assert [m[key] for m in got] == [m[key] for m in ref[3:]], key
    assert resumed.scaler.state_dict() == full.scaler.state_dict()
    for (name, a), b in zip(full.model.named_parameters(), resumed.model.parameters()):
        assert torch.equal(a, b), name
