"""fp32 CPU inference matmuls through oneDNN (issue 12: the CPU pipeline ratio).

PyTorch's default fp32 CPU linear is MKL's sgemm. On the 2-core AMD EPYC (AVX2) we measure on, oneDNN's inner
product (``torch.ops.mkldnn._linear_pointwise``, the kernel inductor uses on CPUs) is 1.3-1.5x faster at the
transformer's shapes (256 tokens x 1152-4608 wide) and ~3x faster at T5's few-row shapes (a 20-token prompt times a
4096 x 10240 weight, where sgemm spends its time packing the weight). It also adds the bias, and the tanh-GELU of the
MLP, inside the same call: fewer passes over the activations.

:func:`linear` takes that path only for plain fp32 CPU tensors with autograd and autocast off (sampling), and falls
back to ``F.linear`` everywhere else (training, GPUs, bf16, quantized or distributed weights, torch.compile, which has
its own CPU kernels). The results differ from sgemm's by summation order only (~1e-6 relative in fp32).
:class:`Linear` is an ``nn.Linear`` (same parameters and names) that calls it; :func:`onednn_linears` routes every
``F.linear`` of a third-party module (T5) through it for the duration of a ``with`` block.
"""

from __future__ import annotations

import contextlib

import torch
import torch.nn.functional as F
from torch import nn
from torch.overrides import TorchFunctionMode

_PLAIN = (torch.Tensor, nn.Parameter)
_available = torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_linear_pointwise")


def _use_onednn(x: torch.Tensor, weight: torch.Tensor) -> bool:
    return (
        _available
        and x.device.type == "cpu"
        and x.dtype == torch.float32
        and weight.dtype == torch.float32
        and type(x) in _PLAIN
        and type(weight) in _PLAIN
        and not torch.is_grad_enabled()
        and not torch.is_autocast_enabled("cpu")
        and not torch.compiler.is_compiling()
    )


def linear(
    x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None, gelu: bool = False
) -> torch.Tensor:
    """``F.linear(x, weight, bias)`` (then tanh-GELU when ``gelu``); x (..., K), weight (N, K) -> (..., N)."""
    global _available
    if _use_onednn(x, weight):
        try:
            attr, algorithm = ("gelu", "tanh") if gelu else ("none", "")
            return torch.ops.mkldnn._linear_pointwise(x, weight, bias, attr, [], algorithm)
        except RuntimeError:  # a oneDNN build without this primitive: use sgemm from now on
            _available = False
    out = F.linear(x, weight, bias)
    return F.gelu(out, approximate="tanh") if gelu else out


class Linear(nn.Linear):
    """``nn.Linear`` whose fp32 CPU inference goes through oneDNN (:func:`linear`)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return linear(x, self.weight, self.bias)


class _LinearMode(TorchFunctionMode):
    def __torch_function__(self, func, types, args=(), kwargs=None):
        if func is F.linear:
            return linear(*args, **(kwargs or {}))
        return func(*args, **(kwargs or {}))


@contextlib.contextmanager
def onednn_linears():
    """Route every ``F.linear`` inside the block through :func:`linear` (for modules we do not own, e.g. T5)."""
    with _LinearMode():
        yield
