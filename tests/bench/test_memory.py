"""diffusion.bench.memory: bytes by owner count each storage once and add up to the total; meta tensors hold nothing;
the CPU peak sampler sees an allocation freed before the region ends."""

import time

import torch
from torch import nn

from diffusion.bench.memory import MIB, Peak, held_bytes, module_tensors, tensor_bytes


def test_shared_storage_counts_once_under_the_first_owner():
    a = nn.Linear(8, 8)  # 4 * (64 + 8) bytes
    b = nn.Linear(8, 8)
    b.weight = a.weight  # tied
    view = a.weight.detach()[:2]  # a view of a's storage
    out = held_bytes({"a": module_tensors(a), "b": module_tensors(b), "view": [view]})
    assert out == {"a": 4 * 72, "b": 4 * 8, "view": 0, "total": 4 * 80}
    assert out["total"] == sum(v for k, v in out.items() if k != "total")


def test_meta_tensors_and_missing_modules_hold_nothing():
    with torch.device("meta"):
        meta = nn.Linear(8, 8)
    assert tensor_bytes(module_tensors(meta, None)) == 0


def test_peak_sees_a_transient_allocation():
    peak = Peak("cpu")
    base = peak.now()
    with peak:
        block = torch.ones(64 * MIB // 4)  # 64 MiB, touched, freed before the region ends
        time.sleep(0.05)
        del block
    assert peak.peak - base >= 32 * MIB
