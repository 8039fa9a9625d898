"""diffusion.bench.memory_rows: a training row's step does what ``Trainer.train_step`` does, including the LCM
target's EMA update (the memory of that update is part of the step)."""

import torch

from diffusion.bench import get_size
from diffusion.bench.memory_rows import build_train, train_step


def test_lcm_row_step_updates_the_ema_target():
    s = build_train(get_size("tiny"), "cpu", "lcm", "bf16", "fp32", 2, fused=False)
    before = [p.detach().clone() for p in s.method.target.parameters()]
    train_step(s)
    student = list(s.model.parameters())
    after = list(s.method.target.parameters())
    assert any(not torch.equal(a, b) for a, b in zip(after, before))  # the target moved
    for a, b, p in zip(after, before, student):  # theta^- <- mu theta^- + (1 - mu) theta
        torch.testing.assert_close(a, torch.lerp(b, p.detach(), 1.0 - s.method.ema_decay))
