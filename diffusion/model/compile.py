"""Compiled sampling (issue 12): regional ``torch.compile`` of the repeated PixArt block, CUDA graphs of a whole step.

Regional compilation: every ``PixArtBlock`` of a model (the base's blocks and a ControlNet's copies alike) is compiled
in place with ``dynamic=False``. They all run one ``PixArtBlock.forward`` code object and Dynamo lifts parameters to
graph inputs, so one graph per input signature (caption length, mask or no mask, K/V given or not) serves all 28
blocks: compile time is that of one block, not of the model. Embedders, head and samplers stay eager.

CUDA graphs: ``torch.compile(model, mode="reduce-overhead")`` of the whole denoiser step, for sampling with static
shapes (one resolution, one batch, one caption length): the kernels of a step are captured once and replayed, which
removes the launch overhead that dominates a 1024² step at batch 1 on a fast GPU. CUDA only.
"""

from __future__ import annotations

import os
import shutil
import warnings

import torch
from torch import nn

from diffusion.model.blocks import PixArtBlock


def cpp_compiler_missing() -> str | None:
    """Why inductor cannot build CPU kernels here (no C++ compiler on the PATH), or None when it can."""
    candidates = [c for c in (os.environ.get("CXX"), "g++", "clang++", "c++") if c]
    if any(shutil.which(c) for c in candidates):
        return None
    return f"torch.compile on the CPU needs a C++ compiler and none of {candidates} is on the PATH (set CXX)"


def compile_blocks(model: nn.Module, dynamic: bool = False, **compile_kwargs) -> int:
    """``torch.compile`` every ``PixArtBlock`` of ``model`` in place (regional compilation); returns how many.

    Works for PixArt / PixArtMS and the ControlNet wrappers (their ``copied_block`` copies are PixArt blocks too).
    Compilation happens lazily at the first call of each input signature. On a CPU without a C++ compiler nothing is
    compiled: a warning says why and the model stays eager (0 is returned).
    """
    device = next(model.parameters()).device
    if device.type == "cpu" and (reason := cpp_compiler_missing()):
        warnings.warn(f"compile_blocks: {reason}; running eager", stacklevel=2)
        return 0
    blocks = [m for m in model.modules() if isinstance(m, PixArtBlock)]
    for block in blocks:
        block.compile(dynamic=dynamic, **compile_kwargs)
    return len(blocks)


def blocks_compiled(model: nn.Module) -> bool:
    """True when ``compile_blocks`` has compiled the blocks of ``model``."""
    return any(getattr(m, "_compiled_call_impl", None) is not None for m in model.modules())


def graphed_step(model: nn.Module):
    """``model`` compiled whole with CUDA graphs (``mode="reduce-overhead"``, static shapes); same call signature.

    Raises a ``RuntimeError`` unless the model is on a CUDA device. Outputs live in the graph's static memory and are
    overwritten by the next replay: the caller copies what it keeps (``Pipeline`` does).
    """
    device = next(model.parameters()).device
    if device.type != "cuda":
        raise RuntimeError(f"CUDA graphs need the model on a CUDA device; it is on {device} (drop --cuda-graphs)")
    return torch.compile(model, mode="reduce-overhead", dynamic=False)
