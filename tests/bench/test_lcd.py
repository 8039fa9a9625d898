"""diffusion.bench.lcd: our LCD training step (built as the trainer builds it) and the official script's step on
diffusers' transformer compute the same thing: equal losses and gradient norms at step 1 from the same weights, inputs
and draws, and still equal at step 2, after AdamW and the EMA update have moved student and target."""

import pytest
import torch

from diffusion.bench import get_size
from diffusion.bench.lcd import bench_lcd, build_sides, lcd_batch, lcd_config

TINY = get_size("tiny", resolution=64)


def rel(a: float, b: float) -> float:
    return abs(a - b) / abs(b)


def test_steps_agree_fp32():
    ours, reference = build_sides(TINY, "fp32", "cpu")
    data = lcd_batch(TINY, 2, 20, ours.model.caption_channels)
    torch.manual_seed(3)
    draws = ours.method.draw(data["x0"])
    assert ours.model.grad_checkpointing and reference.student.is_gradient_checkpointing
    for step in (1, 2):  # step 2 runs on the optimizer's and the EMA's update of step 1
        (loss_o, norm_o), (loss_r, norm_r) = ours(data, draws), reference(data, draws)
        assert rel(loss_o, loss_r) < 1e-5, step
        assert rel(norm_o, norm_r) < 1e-4, step
    assert loss_o > 0


def test_bench_lcd_tiny():
    fp32 = bench_lcd(TINY, "fp32", warmup=0, repeats=1)
    assert fp32.ours > 0 and fp32.reference > 0 and fp32.ratio > 0
    assert fp32.loss_rel_diff < 1e-5
    bf16 = bench_lcd(TINY, "bf16", warmup=0, repeats=1)  # bf16 teacher (the config's): rounding, not another loss
    assert bf16.loss_rel_diff < 0.05


def test_lcd_config():
    assert lcd_config("bf16")["method"]["teacher_dtype"] == "bf16"  # the config's
    assert lcd_config("fp32")["method"]["teacher_dtype"] is None
    with pytest.raises(ValueError, match="precision"):
        lcd_config("fp16")
