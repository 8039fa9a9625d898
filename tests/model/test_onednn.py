"""diffusion/model/onednn.py and the fused block ops: oneDNN's fp32 CPU inference linear (bias and tanh-GELU fused)
equals F.linear to fp32 rounding, is not used with autograd or autocast, and routes a third-party module's linears
inside ``onednn_linears``; the patch embedding as a linear equals the convolution and gives contiguous tokens."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from diffusion.model import onednn
from diffusion.model.blocks import modulate
from diffusion.model.embeddings import Mlp, PatchEmbed
from diffusion.model.onednn import Linear, linear, onednn_linears


@pytest.mark.parametrize("shape", [(7, 64), (2, 20, 64)])
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("gelu", [False, True])
def test_linear_equals_f_linear(shape, bias, gelu):
    g = torch.Generator().manual_seed(0)
    x, w, b = torch.randn(*shape, generator=g), torch.randn(96, 64, generator=g), torch.randn(96, generator=g)
    b = b if bias else None
    ref = F.linear(x, w, b)
    ref = F.gelu(ref, approximate="tanh") if gelu else ref
    with torch.no_grad():
        torch.testing.assert_close(linear(x, w, b, gelu=gelu), ref, rtol=1e-5, atol=1e-5)


def test_autograd_and_autocast_take_f_linear():
    x, w = torch.randn(4, 8, requires_grad=True), torch.randn(6, 8)
    assert not onednn._use_onednn(x, w)
    out = linear(x, w)
    assert torch.equal(out, F.linear(x, w)) and out.requires_grad  # training: sgemm, differentiable
    with torch.no_grad():
        assert onednn._use_onednn(x, w) == onednn._available
        assert not onednn._use_onednn(x.double(), w.double())  # fp32 only
        with torch.autocast("cpu", dtype=torch.bfloat16):
            assert not onednn._use_onednn(x, w) and linear(x, w).dtype == torch.bfloat16  # autocast keeps its meaning


def test_linear_module_is_an_nn_linear_with_the_same_weights():
    torch.manual_seed(0)
    ours, ref = Linear(16, 8), nn.Linear(16, 8)
    ref.load_state_dict(ours.state_dict())
    assert isinstance(ours, nn.Linear) and ours.state_dict().keys() == ref.state_dict().keys()
    x = torch.randn(3, 5, 16)
    with torch.no_grad():
        torch.testing.assert_close(ours(x), ref(x), rtol=1e-5, atol=1e-6)


def test_mlp_fuses_gelu_and_a_wrapped_fc1_still_runs():
    torch.manual_seed(0)
    mlp, x = Mlp(16, 32, 16), torch.randn(2, 5, 16)
    with torch.no_grad():
        ref = mlp.fc2(F.gelu(F.linear(x, mlp.fc1.weight, mlp.fc1.bias), approximate="tanh"))
        torch.testing.assert_close(mlp(x), ref, rtol=1e-5, atol=1e-6)

    class Doubled(nn.Module):  # stands for an adapter wrapping fc1 (peft's LoRA layer is not a Linear)
        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def forward(self, x):
            return 2 * self.inner(x)

    mlp.fc1 = Doubled(mlp.fc1)
    with torch.no_grad():
        want = mlp.fc2(F.gelu(2 * F.linear(x, mlp.fc1.inner.weight, mlp.fc1.inner.bias), approximate="tanh"))
        torch.testing.assert_close(mlp(x), want, rtol=1e-5, atol=1e-6)


def test_onednn_linears_routes_a_modules_linears():
    torch.manual_seed(0)
    net, x = nn.Sequential(nn.Linear(16, 32), nn.GELU(), nn.Linear(32, 4)), torch.randn(3, 16)
    seen = []
    real = onednn.linear
    with torch.no_grad():
        ref = net(x)
        with onednn_linears():
            onednn.linear = lambda *a, **k: seen.append(1) or real(*a, **k)
            try:
                out = net(x)
            finally:
                onednn.linear = real
        net(x)  # outside the block: F.linear as usual
    assert len(seen) == 2
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("hw", [(8, 12), (7, 9)])  # (7, 9): not divisible by the patch, the convolution's path
def test_patch_embed_as_linear_equals_the_convolution(hw):
    torch.manual_seed(0)
    embed, x = PatchEmbed(2, 4, 48), torch.randn(3, 4, *hw)
    with torch.no_grad():
        ref = embed.proj(x).flatten(2).transpose(1, 2)
        out = embed(x)
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-6)
    assert out.is_contiguous() or hw == (7, 9)


def test_modulate_is_the_multiply_add():
    g = torch.Generator().manual_seed(0)
    x, shift, scale = torch.randn(2, 5, 8, generator=g), torch.randn(2, 1, 8, generator=g), torch.randn(2, 1, 8)
    torch.testing.assert_close(modulate(x, shift, scale), x * (1 + scale) + shift, rtol=1e-6, atol=1e-6)
