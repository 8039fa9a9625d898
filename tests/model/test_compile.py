"""diffusion/model/compile.py: regional compilation compiles every PixArt block (a ControlNet's copies too) and holds
the output; without a C++ compiler on the CPU it warns and stays eager; CUDA graphs refuse a CPU model."""

import copy

import pytest
import torch

from diffusion.model import compile as compile_mod
from diffusion.model.compile import blocks_compiled, compile_blocks, cpp_compiler_missing, graphed_step
from diffusion.model.controlnet import PixArtControlNet
from tests.model.helpers import inputs, tiny
from tests.model.test_controlnet import _randomize_projections

needs_compiler = pytest.mark.skipif(cpp_compiler_missing() is not None, reason="no C++ compiler for inductor")


@needs_compiler
@pytest.mark.slow  # inductor builds C++ kernels for one block: ~20-60 s on two shared cores
def test_compiled_blocks_hold_the_output_for_the_model_and_a_controlnet():
    cn = _randomize_projections(PixArtControlNet(tiny(True, depth=3), copy_blocks=2).eval())
    x, t, y, mask, info = inputs()
    c = torch.randn_like(x)
    compiled = copy.deepcopy(cn)
    assert compile_blocks(compiled) == 3 + 2  # base blocks and copies
    assert blocks_compiled(compiled) and not blocks_compiled(cn)
    with torch.no_grad():
        for args in ((y, mask, info), (None, None, info)):  # plain and with the caption encoded once
            kw = {} if args[0] is not None else {"caption": cn.encode_caption(y, mask)}
            eager = cn(x, t, *args, c=c, **kw)
            torch.testing.assert_close(compiled(x, t, *args, c=c, **kw), eager, rtol=1e-4, atol=1e-5)


def test_compile_blocks_without_a_compiler_warns_and_stays_eager(monkeypatch):
    monkeypatch.setattr(compile_mod.shutil, "which", lambda name: None)
    monkeypatch.delenv("CXX", raising=False)
    assert "C++ compiler" in cpp_compiler_missing()
    model = tiny(False)
    with pytest.warns(UserWarning, match=r"C\+\+ compiler"):
        assert compile_blocks(model) == 0
    assert not blocks_compiled(model)


def test_cuda_graphs_need_cuda():
    with pytest.raises(RuntimeError, match="CUDA"):
        graphed_step(tiny(False))
