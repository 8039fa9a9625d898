"""diffusion.bench.simulate: the simulation on fake tensors against a real CPU run of the same code (item 2 of issue
20: within 2% for a teacher, an LCM and a ControlNet step and for inference), the CUDA rules it applies (autocast
casts as CUDA autocast does, fused attention without the attention matrix), and that nothing outlives a call."""

import pytest
import torch
import torch.nn.functional as F
from torch._subclasses.fake_tensor import FakeTensorMode

from diffusion.bench.cuda_rules import autocast_ops, cuda_autocast_on_cpu, cuda_policy
from diffusion.bench.fake import LiveBytes, ValueFakeMode
from diffusion.bench.memory import rows_markdown
from diffusion.bench.memory_rows import PAPER
from diffusion.bench.simulate import simulate_row, simulate_rows, simulation


@pytest.mark.parametrize("row", ["teacher-bf16", "lcm-bf16", "controlnet-bf16", "infer-bf16"])
def test_simulation_matches_a_real_cpu_run(row):
    """Same code, same rules (CPU target), fake vs real tensors, the same live-storage counter: within 2%."""
    real = simulate_row(row, "tiny", target="cpu", fake=False)
    simulated = simulate_row(row, "tiny", target="cpu")
    assert "error" not in real and "error" not in simulated, (real, simulated)
    assert simulated["peak"] == pytest.approx(real["peak"], rel=0.02)
    assert simulated["weights"] == real["weights"] and simulated["grads"] == real["grads"]
    assert simulated["optimizer"] == real["optimizer"]


def test_counter_follows_views_and_frees():
    with LiveBytes() as counter:
        a = torch.ones(1024)  # 4 KiB
        view = a[:10]
        assert counter.live == 4096
        del a
        assert counter.live == 4096  # the view keeps the storage alive
        b = view * 2  # 40 bytes
        del view, b
        assert counter.live == 0 and counter.peak == 4096 + 40


def test_small_bookkeeping_tensors_keep_values_model_tensors_do_not():
    with ValueFakeMode():
        mask = torch.zeros(3, 8, dtype=torch.long)
        mask[:, :5] = 1  # a write replayed on the values, seen through the base
        used = mask.bool().any(dim=0).nonzero()
        assert int(used.max()) == 4 and bool(mask.bool().any(dim=1).all())
        weights = torch.randn(4, 4)
        with pytest.raises(Exception, match="data-dependent|DataDependent|_local_scalar_dense"):
            float(weights.sum())


def probe(device: str) -> dict[str, torch.dtype]:
    x = torch.empty(4, 8, device=device, dtype=torch.bfloat16)
    w = torch.empty(8, 8, device=device)
    ops = dict(
        layer_norm=lambda: F.layer_norm(x, (8,)),
        group_norm=lambda: F.group_norm(x[None], 2),
        linear=lambda: F.linear(x.float(), w),
        matmul=lambda: x.float() @ w,
        sum=lambda: x.sum(),
        mean=lambda: x.mean(),
        softmax=lambda: x.softmax(-1),
        square=lambda: x.square(),
        exp=lambda: x.exp(),
        gelu=lambda: F.gelu(x),
        upsample=lambda: F.interpolate(x[None, None], scale_factor=2.0),
        einsum=lambda: torch.einsum("ij->ji", w),
        addcmul=lambda: torch.addcmul(w[:4], x, x),
        mse=lambda: F.mse_loss(x, x),
        cat=lambda: torch.cat([x, w]),
    )
    return {name: fn().dtype for name, fn in ops.items()}


def test_cpu_autocast_casts_as_cuda_autocast_inside_the_block_only():
    """CUDA autocast (real, on fake CUDA tensors: its kernels run without a GPU) vs the emulation on the CPU."""
    assert all(cuda_policy(name) for name in autocast_ops("AutocastCUDA"))  # every CUDA-autocast op is known
    with FakeTensorMode():
        torch.set_autocast_enabled("cuda", True)
        torch.set_autocast_dtype("cuda", torch.bfloat16)
        torch.autocast_increment_nesting()
        try:
            cuda = probe("cuda")
        finally:
            torch.autocast_decrement_nesting()
            torch.clear_autocast_cache()
            torch.set_autocast_enabled("cuda", False)
        with cuda_autocast_on_cpu(), torch.autocast("cpu", dtype=torch.bfloat16):
            emulated = probe("cpu")
        with torch.autocast("cpu", dtype=torch.bfloat16):
            native = probe("cpu")
    assert emulated == cuda
    assert native["layer_norm"] == torch.bfloat16 != cuda["layer_norm"]  # the CPU's own rules are back


def test_fused_attention_keeps_no_attention_matrix():
    n, heads, d = 1024, 2, 64
    matrix = 2 * n * n * heads  # one bf16 (N, N) attention matrix per head
    with simulation("cuda", "cpu") as counter:
        q = torch.randn(1, heads, n, d, dtype=torch.bfloat16, requires_grad=True)
        F.scaled_dot_product_attention(q, q, q).sum().backward()
        peak = counter.peak
    assert peak < matrix / 2
    with simulation("cpu", "cpu") as counter:  # the CPU's own kernel stores no matrix either: the point is CUDA's
        q = torch.randn(1, heads, n, d, dtype=torch.bfloat16, requires_grad=True)
        F.scaled_dot_product_attention(q, q, q).sum().backward()
    assert counter.peak < matrix / 2


def test_nothing_outlives_a_simulation():
    from diffusion.model.embeddings import _sincos_table

    rng = torch.random.get_rng_state()
    cache = set(FakeTensorMode.cache)
    result = simulate_row("lcm-bf16", "tiny")  # CUDA target: autocast rules, fused attention, fake modes
    assert "error" not in result and result["simulated"] and result["target"] == "cuda"
    assert torch.equal(torch.random.get_rng_state(), rng)
    assert set(FakeTensorMode.cache) == cache and _sincos_table.cache_info().currsize == 0
    assert not torch.is_autocast_enabled("cpu") and torch.get_autocast_dtype("cpu") == torch.bfloat16
    assert not torch._C._dispatch_has_kernel_for_dispatch_key("aten::layer_norm", "AutocastCPU")
    assert torch._C._len_torch_dispatch_stack() == 0
    q = torch.randn(1, 2, 16, 8)  # real CPU attention works again and is PyTorch's own
    expected = torch.softmax(q @ q.transpose(-1, -2) / 8**0.5, -1) @ q
    torch.testing.assert_close(F.scaled_dot_product_attention(q, q, q), expected)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert F.layer_norm(torch.randn(2, 8, dtype=torch.bfloat16), (8,)).dtype == torch.bfloat16


def test_rows_report_simulated_or_say_why(monkeypatch):
    import diffusion.bench.simulate as simulate

    result = simulate_rows(["teacher-bf16"], "tiny")
    row = result["rows"]["teacher-bf16"]
    assert result["simulated"] and row["peak"] > row["weights"] + row["optimizer"] > 0
    assert row["peak_first_step"] < row["peak"]  # the second step holds the Adam state
    assert "SIMULATED" in rows_markdown(result, PAPER)

    def cannot(*args, **kwargs):
        raise NotImplementedError("no fake kernel for this op")

    monkeypatch.setattr(simulate, "build_row_train", cannot)
    failed = simulate_rows(["teacher-bf16"], "tiny")
    assert "no fake kernel" in failed["rows"]["teacher-bf16"]["error"]
    assert "not simulated: simulation failed" in rows_markdown(failed, PAPER)
