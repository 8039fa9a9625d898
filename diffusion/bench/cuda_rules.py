"""What a CUDA device would do differently from the CPU, for the memory simulation (:mod:`diffusion.bench.simulate`).

Training steps are simulated on fake tensors of the *CPU* device: PyTorch's autograd engine needs a CUDA context for
CUDA tensors, fake ones included, so a backward on fake "cuda" tensors fails on a machine without a GPU. Two things
then differ from a GPU and are made to follow CUDA's rules here, only while a ``with`` block runs:

1. **Autocast** (:func:`cuda_autocast_on_cpu`). CPU and CUDA autocast cast different ops: on CUDA ``layer_norm``,
   ``group_norm``, ``softmax``, ``sum``, ``exp``, ``pow`` (hence ``square``), the upsampling ops and the losses run in
   float32 and ``einsum`` / ``addmv`` in half precision; on the CPU these run in whatever dtype they get. For the
   duration, every op that has a CUDA autocast kernel in the installed torch gets a kernel at the ``AutocastCPU`` key
   applying CUDA's policy (the tables below, from ``aten/src/ATen/autocast_mode.{h,cpp}``; a test checks them against
   the kernels registered at ``AutocastCUDA`` and the dtypes CUDA autocast produces on fake CUDA tensors), and every
   op only the CPU autocasts passes through as on CUDA. The matmul-like ops both devices cast alike keep the CPU's own
   kernel, and with it the autocast weight cache (a half-precision copy of each trainable fp32 weight, kept until
   the outermost autocast region ends) that CUDA also has. Not emulated: the weight cache for the CUDA-only
   half-precision ops (``einsum``, ``addmv``, ...; they never see a weight in this project).
2. **Attention kernels** (:func:`fused_attention_kernels`). ``F.scaled_dot_product_attention`` on a CUDA GPU (sm80+)
   runs FlashAttention-2 for half-precision inputs without a mask and the memory-efficient kernel otherwise (PyTorch's
   default priority: flash > efficient > math); both keep only the output and a float32 logsumexp (B, h, N) for the
   backward, never the (N, N) attention matrix. The op's composite kernel is replaced, for the duration, by one that
   calls those very ops
   (``aten._scaled_dot_product_{flash,efficient}_attention``), whose fake kernels and backward formulas are
   PyTorch's. Their backward scratch memory (:data:`ATTENTION_WORKSPACES`) is counted as a transient on top:
   FlashAttention-2's float32 dQ accumulator (B, round128(N), h, round32(d)) and softmax_d (B, h, round128(N))
   (``flash_api.cpp``, ``mha_bwd``); for the memory-efficient kernel ``delta`` (B, h, N) and a float32 dQ accumulator
   (B, h, N, d) (its exact tile padding is not modelled). A V100 (sm70) has no FlashAttention: it would run the
   memory-efficient kernel everywhere, whose saved tensors are the same size.
"""

from __future__ import annotations

import contextlib
import warnings

import torch

aten = torch.ops.aten
AUTOCAST_CPU = torch._C.DispatchKey.AutocastCPU
HALF = (torch.float16, torch.bfloat16)

# CUDA autocast policies by op name (aten/src/ATen/autocast_mode.h: AT_FORALL_LOWER_PRECISION_FP, AT_FORALL_FP32,
# AT_FORALL_FP32_SET_OPT_DTYPE, AT_FORALL_DIFFERENT_REDISPATCH_SIGNATURE, AT_FORALL_PROMOTE; autocast_mode.cpp).
LOWER = {
    "_convolution", "conv1d", "conv2d", "conv3d", "conv_tbc", "conv_transpose1d", "conv_transpose2d",
    "conv_transpose3d", "convolution", "prelu", "addmm", "addmv", "addr", "matmul", "einsum", "mm", "mv",
    "linalg_vecdot", "linear", "addbmm", "baddbmm", "bmm", "chain_matmul", "linalg_multi_dot",
    "_thnn_fused_lstm_cell", "_thnn_fused_gru_cell", "lstm_cell", "gru_cell", "rnn_tanh_cell", "rnn_relu_cell",
    "_scaled_dot_product_flash_attention", "scaled_dot_product_attention", "cudnn_convolution",
    "cudnn_convolution_transpose", "_cudnn_rnn",
}  # fmt: skip
FP32 = {
    "acos", "asin", "cosh", "erfinv", "exp", "expm1", "log", "log10", "log2", "log1p", "reciprocal", "rsqrt", "sinh",
    "tan", "pow", "softplus", "layer_norm", "native_layer_norm", "group_norm", "rms_norm", "frobenius_norm",
    "nuclear_norm", "cosine_similarity", "poisson_nll_loss", "cosine_embedding_loss", "nll_loss", "nll_loss2d",
    "hinge_embedding_loss", "kl_div", "l1_loss", "smooth_l1_loss", "huber_loss", "mse_loss", "margin_ranking_loss",
    "multilabel_margin_loss", "soft_margin_loss", "triplet_margin_loss", "multi_margin_loss",
    "binary_cross_entropy_with_logits", "dist", "pdist", "cdist", "renorm", "logsumexp", "linalg_matrix_sqrth",
    "upsample_nearest1d", "_upsample_nearest_exact1d", "upsample_nearest2d", "_upsample_nearest_exact2d",
    "upsample_nearest3d", "_upsample_nearest_exact3d", "upsample_linear1d", "upsample_bilinear2d",
    "_upsample_bilinear2d_aa", "upsample_trilinear3d", "upsample_bicubic2d", "_upsample_bicubic2d_aa",
}  # fmt: skip
SET_OPT_DTYPE = {
    "prod", "softmax", "log_softmax", "cumprod", "cumsum", "linalg_vector_norm", "linalg_matrix_norm", "sum",
}  # fmt: skip
APPEND_DTYPE = {"norm.Scalar": aten.norm.ScalarOpt_dtype, "norm.ScalarOpt_dim": aten.norm.ScalarOpt_dim_dtype}
PROMOTE = {"addcdiv", "addcmul", "atan2", "bilinear", "cross", "dot", "grid_sampler", "index_put", "tensordot",
           "scatter_add", "vdot"}  # fmt: skip
BANNED = {"binary_cross_entropy"}


def autocast_ops(key: str) -> set[str]:
    """``name`` or ``name.overload`` of every aten op with a kernel at dispatch key ``key`` in this torch."""
    names = [n for n in torch._C._dispatch_get_all_op_names() if n.startswith("aten::")]
    return {n[len("aten::") :] for n in names if torch._C._dispatch_has_kernel_for_dispatch_key(n, key)}


def cuda_policy(name: str) -> str:
    """CUDA's autocast policy of ``name`` (``op`` or ``op.overload``)."""
    base = name.split(".")[0]
    for policy, names in (("lower", LOWER), ("fp32", FP32), ("set_opt_dtype", SET_OPT_DTYPE), ("promote", PROMOTE)):
        if base in names:
            return policy
    if name in APPEND_DTYPE:
        return "append_dtype"
    if base in BANNED:
        return "banned"
    raise KeyError(f"torch {torch.__version__} autocasts aten::{name} on CUDA with a policy this emulation lacks")


def _eligible(x) -> bool:
    """What autocast casts: a floating tensor that is not float64, on the (CPU) device the rules stand in for."""
    if not isinstance(x, torch.Tensor):
        return False
    return x.is_floating_point() and x.dtype != torch.float64 and x.device.type == "cpu"


def _cast(x, dtype: torch.dtype):
    if isinstance(x, (list, tuple)):
        return type(x)(_cast(v, dtype) for v in x)
    return x.to(dtype) if _eligible(x) and x.dtype != dtype else x


def _op(name: str):
    base, _, overload = name.partition(".")
    return getattr(getattr(aten, base), overload or "default")


def _kernel(name: str, policy: str):
    op = _op(name)
    no_autocast = torch._C.DispatchKeySet(AUTOCAST_CPU)

    def kernel(*args, **kwargs):
        with torch._C._ExcludeDispatchKeyGuard(no_autocast):
            if policy == "banned":
                raise RuntimeError(f"aten::{name} is unsafe to autocast on CUDA (use the *_with_logits variant)")
            if policy == "set_opt_dtype":
                if args and _eligible(args[0]) and kwargs.get("dtype") is None:
                    index = [a.name for a in op._schema.arguments].index("dtype")
                    if len(args) > index:
                        args = (*args[:index], args[index] or torch.float32, *args[index + 1 :])
                    else:
                        kwargs = {**kwargs, "dtype": torch.float32}
                return op(*args, **kwargs)
            if policy == "append_dtype":
                return APPEND_DTYPE[name](*args, **kwargs, dtype=torch.float32) if _eligible(args[0]) else op(*args)
            if policy == "promote":
                tensors = [a for a in (*args, *kwargs.values()) if _eligible(a)]
                dtype = torch.float32 if any(t.dtype == torch.float32 for t in tensors) else None
                dtype = dtype or torch.get_autocast_dtype("cpu")
            else:
                dtype = torch.float32 if policy == "fp32" else torch.get_autocast_dtype("cpu")
            return op(*_cast(args, dtype), **{k: _cast(v, dtype) for k, v in kwargs.items()})

    return kernel


def _passthrough(name: str):
    """An op CUDA does not autocast: no cast, and the ops inside a composite still meet autocast (a fallthrough)."""
    op = _op(name)
    after = torch._C._dispatch_keyset_full_after(AUTOCAST_CPU)

    def kernel(keyset, *args, **kwargs):
        return op.redispatch(keyset & after, *args, **kwargs)

    return kernel


@contextlib.contextmanager
def cuda_autocast_on_cpu():
    """For the ``with`` block, CPU autocast (``torch.autocast("cpu", dtype)``) casts exactly as CUDA autocast would.

    The registrations live in one ``torch.library.Library`` that is destroyed on exit, which restores the CPU's own
    kernels; autocast on/off state and dtype are never touched (the code under test sets them).
    """
    cuda, cpu = autocast_ops("AutocastCUDA"), autocast_ops("AutocastCPU")
    lib = torch.library.Library("aten", "IMPL")
    try:
        with warnings.catch_warnings():  # "overriding a previously registered kernel": the point, undone on exit
            warnings.simplefilter("ignore")
            for name in sorted(cuda):
                policy = cuda_policy(name)
                if policy == "lower" and name in cpu:
                    continue  # the CPU's own kernel casts alike and keeps the autocast weight cache
                lib.impl(name, _kernel(name, policy), "AutocastCPU")
            for name in sorted(cpu - cuda):
                lib.impl(name, _passthrough(name), "AutocastCPU", with_keyset=True)
        yield
    finally:
        lib._destroy()


def _additive_bias(mask: torch.Tensor, q: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    """A boolean (True = attend) or additive mask as an additive bias broadcast to (B, h, N, L), as SDPA does."""
    if mask.dtype == torch.bool:
        bias = torch.zeros(mask.shape, dtype=q.dtype, device=q.device).masked_fill(~mask, float("-inf"))
    else:
        bias = mask.to(q.dtype)
    return bias.expand(q.shape[0], q.shape[1], q.shape[2], k.shape[2])


def fused_attention(q, k, v, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None, enable_gqa=False):
    """``F.scaled_dot_product_attention`` as a CUDA GPU runs it: FlashAttention-2 for half-precision inputs without a
    mask (head dim <= 256), the memory-efficient kernel otherwise. q (B,h,N,d), k/v (B,h,L,d) -> (B,h,N,d).

    Registered as the op's composite kernel, below autocast (which has cast q, k, v already, SDPA being a
    half-precision op on both devices) and above autograd (the fused ops bring their own backward)."""
    if attn_mask is None and q.dtype in HALF and q.shape[-1] <= 256:
        return aten._scaled_dot_product_flash_attention(q, k, v, dropout_p, is_causal, False, scale=scale)[0]
    bias = None if attn_mask is None else _additive_bias(attn_mask, q, k)
    grad = torch.is_grad_enabled() and any(t.requires_grad for t in (q, k, v))
    return aten._scaled_dot_product_efficient_attention(q, k, v, bias, grad, dropout_p, is_causal, scale=scale)[0]


@contextlib.contextmanager
def fused_attention_kernels():
    """For the ``with`` block, ``aten::scaled_dot_product_attention`` runs :func:`fused_attention` on every device.

    A dispatcher registration (not a Python mode), so the recomputation of a checkpointed block inside the backward
    takes the same kernels; destroyed on exit, which restores PyTorch's own composite kernel. Fake tensors only:
    the fused kernels have no CPU implementation."""
    lib = torch.library.Library("aten", "IMPL")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            lib.impl("scaled_dot_product_attention", fused_attention, "CompositeImplicitAutograd")
        yield
    finally:
        lib._destroy()


def _round(x: int, m: int) -> int:
    return -(-x // m) * m


def _flash_backward_workspace(args, kwargs) -> int:
    b, h, n, d = args[1].shape  # query
    return 4 * (b * _round(n, 128) * h * _round(d, 32) + b * h * _round(n, 128))


def _efficient_backward_workspace(args, kwargs) -> int:
    b, h, n, d = args[1].shape
    return 4 * (b * h * n + b * h * n * d)


ATTENTION_WORKSPACES = {
    aten._scaled_dot_product_flash_attention_backward.default: _flash_backward_workspace,
    aten._scaled_dot_product_efficient_attention_backward.default: _efficient_backward_workspace,
}
