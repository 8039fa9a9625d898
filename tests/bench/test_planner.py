"""diffusion.bench.planner: the search for the largest batch, monotonicity (more memory never gives a smaller batch,
more GPUs under FSDP never a smaller one), FSDP per-rank memory, and the simulated config step it relies on (the
zero-gradient optimizer warm-up leaves the state a real first step leaves; checkpointing and bf16 copies save)."""

import pytest

from diffusion.bench.config_step import Variant, frozen_variants, simulate_config_step
from diffusion.bench.gpus import GIB, PLANNER_GPUS, get_gpu, usable_bytes
from diffusion.bench.planner import Planner, largest_batch, plan_markdown, rank_bytes

CONFIG = "configs/lcm/tiny_lcm.py"


@pytest.mark.parametrize("budget", [5, 11, 30, 333, 10**6])
@pytest.mark.parametrize("curve", ["affine", "convex", "steep"])
def test_largest_batch_checks_the_answer_and_the_next(budget, curve):
    """Bytes convex piecewise affine in the batch (a flat start, then steeper), as a step's peak is."""
    bytes_at = {
        "affine": lambda b: 4 + 2 * b,
        "convex": lambda b: max(8 + b // 2, 3 * b - 20),
        "steep": lambda b: 6 + 50 * b,
    }[curve]
    batch, checked = largest_batch(bytes_at, budget)
    expected = max((b for b in range(4097) if b == 0 or bytes_at(b) <= budget), default=0)
    assert batch == expected
    assert (batch == 0 or batch in checked) and (batch + 1 in checked or batch == 4096)
    assert len(checked) <= 30  # secants and bisection, not one simulation per batch


def synthetic(batch: int) -> dict:
    """A step whose memory is affine in the batch: 10 GiB sharded state, 0.5 GiB per image, 0.3 GiB root/units."""
    return dict(
        peak=int((10 + 1 + 0.5 * batch) * GIB),
        peak_sharded={w: int((10 / w + 1 + 0.5 * batch) * GIB) for w in (2, 8)},
        unit=int(0.08 * GIB),
        root=int(0.06 * GIB),
    )


def test_more_memory_or_more_gpus_never_give_a_smaller_batch(monkeypatch):
    planner = Planner(CONFIG, variants=[Variant()])
    monkeypatch.setattr(planner, "simulate", lambda variant, batch: synthetic(batch))
    answers = {}
    for name in PLANNER_GPUS:
        rows = planner.plan(name)["rows"]
        answers[name] = {r["world"]: r["batch"] for r in rows}
        assert answers[name][1] <= answers[name][2] <= answers[name][8]
    by_memory = sorted(PLANNER_GPUS, key=lambda g: get_gpu(g).memory_gib)
    for small, large in zip(by_memory, by_memory[1:]):
        assert all(answers[small][w] <= answers[large][w] for w in (1, 2, 8))
    for budget_gib in range(8, 90, 3):
        rows = planner.rows(budget_gib * GIB)
        for r in rows:
            assert r["predicted"] == r["batch"]  # an affine step: the fit is exact
            assert r["batch"] == 0 or rank_bytes(synthetic(r["batch"]), r["world"]) <= budget_gib * GIB
            assert rank_bytes(synthetic(r["batch"] + 1), r["world"]) > budget_gib * GIB


@pytest.mark.slow
def test_planner_on_a_real_config_is_monotone_and_verified():
    """The tiny LCM config, simulated: answers verified (fits, the next batch does not), monotone in the budget and
    in the number of FSDP GPUs."""
    variant = Variant(True, "bf16")
    planner = Planner(CONFIG, variants=[variant], log=lambda line: None)
    base = planner.simulate(variant, 4)["peak"]
    small, large = base + 2 * 2**20, base + 6 * 2**20  # budgets a few MiB above batch 4's peak
    rows = {budget: planner.rows(budget) for budget in (small, large)}
    for budget, plan in rows.items():
        for r in plan:
            assert r["batch"] > 0 and r["peak"] <= budget and r["batch"] + 1 in r["checked"]
            assert rank_bytes(planner.cache[(variant, r["batch"] + 1)], r["world"]) > budget
        batches = [r["batch"] for r in sorted(plan, key=lambda r: r["world"])]
        assert batches == sorted(batches)  # 1 <= 2 <= 8 GPUs
    assert all(s["batch"] <= la["batch"] for s, la in zip(rows[small], rows[large]))
    sim = planner.simulate(variant, 4)
    assert rank_bytes(sim, 1) >= rank_bytes(sim, 2) >= rank_bytes(sim, 8)


def test_plan_markdown_states_the_headroom(monkeypatch):
    planner = Planner(CONFIG, variants=[Variant(True, "bf16"), Variant(False, "bf16")])
    monkeypatch.setattr(planner, "simulate", lambda variant, batch: synthetic(batch * (1 + 3 * variant.checkpointing)))
    text = plan_markdown(planner.plan("RTX4090-24GB"))
    assert "1.5 GiB CUDA context" in text and "10% fragmentation" in text and "FSDP 8 GPUs" in text
    assert f"{usable_bytes(get_gpu('RTX4090-24GB')) / GIB:.1f} GiB" in text


def test_config_step_warm_state_equals_a_real_first_step():
    from mmengine.config import Config

    cfg = Config.fromfile(CONFIG)
    warm = simulate_config_step(cfg, Variant(), 3)
    real = simulate_config_step(cfg, Variant(), 3, first_step=True)
    assert warm["peak"] == real["peak"] and warm["peak_sharded"] == real["peak_sharded"]
    assert set(warm["at_peak"]) >= {"weights", "frozen", "optimizer"}


@pytest.mark.slow
def test_checkpointing_and_half_precision_copies_save_memory():
    from mmengine.config import Config

    cfg = Config.fromfile(CONFIG)
    assert frozen_variants(cfg) == ("fp32", "bf16")
    peaks = {v: simulate_config_step(cfg, v, 16)["peak"] for v in (Variant(True, "fp32"), Variant(True, "bf16"))}
    peaks[Variant(False, "bf16")] = simulate_config_step(cfg, Variant(False, "bf16"), 16)["peak"]
    assert peaks[Variant(True, "bf16")] < peaks[Variant(True, "fp32")]
    assert peaks[Variant(True, "bf16")] < peaks[Variant(False, "bf16")]


def test_config_step_of_a_came_config():
    """The Σ LCM config trains with CAME (no fused kernel): its step simulates, the fused flag goes to AdamW only."""
    from mmengine.config import Config

    cfg = Config.fromfile("configs/lcm/pixart_sigma_xl2_img1024_lcm.py")
    tiny = dict(depth=2, hidden_size=48, num_heads=2, caption_channels=32, input_size=8)
    cfg.merge_from_dict({f"model.{k}": v for k, v in tiny.items()})
    assert cfg.optimizer.type == "CAME"
    result = simulate_config_step(cfg, Variant(), 2)
    assert result["at_peak"]["optimizer"] > 0 and result["peak"] > result["at_peak"]["weights"]
