"""Fake tensors that still know the values of small bookkeeping tensors, and a counter of live tensor bytes.

The memory simulation (:mod:`diffusion.bench.simulate`) runs the project's real model, method, optimizer and pipeline
code on fake tensors (``torch._subclasses.fake_tensor``): every op computes shapes, dtypes and strides, nothing is
allocated, so PixArt-XL/2 at 1024², batch 12, "runs" on a laptop CPU in seconds.

- :class:`ValueFakeMode`: a ``FakeTensorMode`` in which small bookkeeping tensors (integer, boolean or float64,
  computed only from Python numbers, real tensors or other such tensors: noise-schedule tables, timesteps, caption
  masks, sampler step lists) also carry their real values (``sim_value``), computed on the CPU. Code that branches on
  them (``trim_caption_padding``'s ``mask.any()``, the LCM sampler's ``timesteps == t``, ``.item()`` on a schedule
  entry) then runs as it would on a device; anything that touches a model tensor stays fake, and a branch on *its*
  values raises, naming the op.
- :class:`LiveBytes`: a ``TorchDispatchMode`` that counts the bytes of live storages on one device type. A storage is
  counted once however many tensors view it (tracked by identity) and uncounted when its last reference dies (a
  ``weakref.finalize`` on the storage: PyTorch keeps one Python object per storage while it lives). The peak can
  include a kernel's transient workspace (``workspaces``: op -> bytes), and each allocation can be rounded up as the
  CUDA caching allocator does (512-byte blocks), which is what ``torch.cuda.max_memory_allocated`` reports.
"""

from __future__ import annotations

import contextlib
import weakref
from collections import defaultdict
from collections.abc import Callable, Iterator

import torch
from torch._subclasses.fake_tensor import (
    DataDependentOutputException,
    DynamicOutputShapeException,
    FakeTensor,
    FakeTensorConverter,
    FakeTensorMode,
)
from torch.utils import _pytree as pytree
from torch.utils._mode_utils import no_dispatch
from torch.utils._python_dispatch import TorchDispatchMode

CUDA_BLOCK = 512  # the CUDA caching allocator's smallest block and rounding unit (c10/cuda/CUDACachingAllocator.cpp)


class _OutputsUnmemoised(FakeTensorConverter):
    """FakeTensorMode memoises every op output by a weak reference to it; ``Module.to(dtype)`` swaps a fake parameter
    with its converted copy (``torch.utils.swap_tensors``), which refuses tensors with weak references. Outputs are
    therefore not memoised (real tensors converted to fake still are)."""

    def set_tensor_memo(self, t: torch.Tensor, v: FakeTensor) -> None:
        if t.device.type != "meta":
            super().set_tensor_memo(t, v)


_UNINITIALISED = {"empty", "empty_like", "empty_strided", "new_empty", "new_empty_strided"}
_DATA_DEPENDENT = (DataDependentOutputException, DynamicOutputShapeException)


class ValueFakeMode(FakeTensorMode):
    """``FakeTensorMode`` whose small bookkeeping tensors (at most ``limit`` elements of an integer, boolean or float64
    dtype, computed from Python numbers, real tensors or other such tensors) keep their real values (``sim_value``),
    so data-dependent Python control flow on them (``.item()``, ``bool()``, ``nonzero``) runs. Model tensors (float32
    / bf16 / fp16) never carry values; a branch on one raises FakeTensorMode's data-dependent error.

    The values are computed on the CPU whatever the fake device, so a caption mask moved to a fake "cuda" device keeps
    its values. An in-place write is replayed on the values (views of a value share its storage, as the fake tensors
    do); a write of unknown data marks the storage stale. Uninitialised factories (``empty``) have no values.
    """

    def __init__(self, limit: int = 1 << 22):
        super().__init__(allow_non_fake_inputs=True)
        self.limit = limit
        self.cache_enabled = True  # 28 identical blocks: most ops repeat (class-wide: :func:`dispatch_cache_scope`)
        self.fake_tensor_converter.__class__ = _OutputsUnmemoised
        self._stale: dict[int, weakref.ref] = {}  # storages written with unknown data

    def __deepcopy__(self, memo):
        """A deep-copied fake tensor (``copy.deepcopy(model)``: the LCM teacher and target) copies its ``__dict__``,
        ``fake_mode`` included; the copy must stay in this mode, not in a copy of it."""
        return self

    def dispatch(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if not isinstance(func, torch._ops.OpOverload):
            return super().dispatch(func, types, args, kwargs)
        if func._schema.is_mutable:
            out = super().dispatch(func, types, args, kwargs)
            if self._real(func, args, kwargs) is None:  # written with unknown data: it and its views lose values
                for x in pytree.tree_leaves((args, kwargs)):
                    if isinstance(x, FakeTensor) and self._value(x) is not None:
                        self._stale[id(x.untyped_storage())] = weakref.ref(x.untyped_storage())
            # else the write was replayed on the values, which alias as the fake tensors do
            return out
        try:
            out = super().dispatch(func, types, args, kwargs)
        except _DATA_DEPENDENT:
            real = self._real(func, args, kwargs)
            if real is None:
                raise
            reals = [t for t in pytree.tree_leaves(real) if isinstance(t, torch.Tensor)]
            if not reals:  # .item(), bool(): a Python value
                return real
            device = next((x.device for x in pytree.tree_leaves(args) if isinstance(x, FakeTensor)), "cpu")
            out = pytree.tree_map_only(torch.Tensor, lambda t: self._fake_of(t, device), real)
            self._attach(out, real)
            return out
        outs = [t for t in pytree.tree_leaves(out) if isinstance(t, torch.Tensor)]
        if outs and func.__name__.split(".")[0] not in _UNINITIALISED and all(self._trackable(t) for t in outs):
            real = self._real(func, args, kwargs)
            if real is not None:
                self._attach(out, real)
        return out

    def _trackable(self, t: torch.Tensor) -> bool:
        """Bookkeeping tensors: small, and integer, boolean or float64 (model tensors are float32 / bf16 / fp16)."""
        return t.numel() <= self.limit and (not t.is_floating_point() or t.dtype == torch.float64)

    def _value(self, x):
        """The real value standing for an input, or ``None`` when it has none (a fake model tensor)."""
        if isinstance(x, FakeTensor):
            stale = self._stale.get(id(x.untyped_storage()))
            if stale is not None and stale() is x.untyped_storage():
                return None
            value = getattr(x, "sim_value", None)
            return x.constant if value is None else value
        if isinstance(x, torch.Tensor):
            return x if self._trackable(x) and x.device.type == "cpu" else None
        return torch.device("cpu") if isinstance(x, torch.device) else x

    def _real(self, func, args, kwargs):
        """The op run for real on the CPU on its inputs' values; ``None`` when an input has none (or it fails)."""
        flat, spec = pytree.tree_flatten((args, kwargs))
        values = [self._value(x) for x in flat]
        if any(v is None and isinstance(x, torch.Tensor) for v, x in zip(values, flat)):
            return None
        real_args, real_kwargs = pytree.tree_unflatten(values, spec)
        try:
            with no_dispatch():
                return func(*real_args, **real_kwargs)
        except Exception:  # an op without a CPU kernel: its output simply stays value-less
            return None

    def _fake_of(self, real: torch.Tensor, device) -> FakeTensor:
        with no_dispatch():
            meta = torch.empty_strided(real.shape, real.stride(), dtype=real.dtype, device="meta")
        return self.fake_tensor_converter.from_meta_and_device(self, meta, torch.device(device))

    def _attach(self, out, real) -> None:
        fakes = [t for t in pytree.tree_leaves(out) if isinstance(t, torch.Tensor)]
        reals = [t for t in pytree.tree_leaves(real) if isinstance(t, torch.Tensor)]
        for fake, value in zip(fakes, reals):
            if isinstance(fake, FakeTensor) and fake.shape == value.shape and fake.dtype == value.dtype:
                fake.sim_value = value


@contextlib.contextmanager
def dispatch_cache_scope():
    """FakeTensorMode's dispatch cache (op + input metadata -> output metadata) is a class attribute: the entries
    added inside the block are removed on exit, so a simulation leaves it as it found it."""
    before = set(FakeTensorMode.cache)
    try:
        yield
    finally:
        for key in set(FakeTensorMode.cache) - before:
            del FakeTensorMode.cache[key]


def _tensors(tree) -> Iterator[torch.Tensor]:
    """Plain tensors in a pytree, looking inside tensor subclasses (DTensor shards, torchao's int8 data + scales)."""
    for x in pytree.tree_leaves(tree):
        if not isinstance(x, torch.Tensor):
            continue
        if type(x) not in (torch.Tensor, torch.nn.Parameter, FakeTensor) and hasattr(x, "__tensor_flatten__"):
            names, _ = x.__tensor_flatten__()
            yield from _tensors([getattr(x, name) for name in names])
        else:
            yield x


class LiveBytes(TorchDispatchMode):
    """Live and peak bytes of the storages on ``device_type`` seen by any op while the mode is active.

    Args:
        device_type: count only tensors on this device type ("cuda", "cpu"); None counts every device.
        block: round each storage up to a multiple of ``block`` bytes (at least one block); 1 = exact bytes.
        workspaces: ``{op: fn(args, kwargs) -> bytes}``, scratch memory a kernel holds while it runs (freed after).
        fake_only: count fake tensors only (in a simulation, real tensors are host-side bookkeeping: numpy tables).
        worlds: also follow, for each world size W, the peak of ``live - sharded + sharded / W``, where ``sharded``
            is what FSDP shards (storages tagged ``weights``, ``frozen``, ``grads``, ``optimizer``, ``ema``):
            ``peak_sharded[W]``, the per-rank peak before FSDP's gather buffers.

    ``tag(tensors, name)`` files storages under a name; ``peak_by_tag`` is the split at the moment of the peak (what
    is not tagged is ``"rest"``: activations, temporaries, the batch, autocast's weight copies).
    """

    SHARDED = frozenset({"weights", "frozen", "grads", "optimizer", "ema"})

    def __init__(
        self,
        device_type: str | None = None,
        block: int = 1,
        workspaces: dict[object, Callable[[tuple, dict], int]] | None = None,
        fake_only: bool = False,
        worlds: tuple[int, ...] = (),
    ):
        super().__init__()
        self.device_type, self.block, self.workspaces = device_type, block, workspaces or {}
        self.fake_only, self.worlds = fake_only, worlds
        self.storages: dict[int, list] = {}  # id of the storage object -> [bytes, tag]
        self.by_tag: dict[str, int] = defaultdict(int)
        self.live = self.sharded = 0
        self.reset_peak()

    def _rounded(self, nbytes: int) -> int:
        if nbytes == 0 or self.block == 1:
            return nbytes
        return -(-nbytes // self.block) * self.block

    def track(self, t: torch.Tensor, tag: str | None = None) -> None:
        """Count ``t``'s storage if it is new (or resized); file it under ``tag`` when given."""
        if (self.device_type is not None and t.device.type != self.device_type) or (
            self.fake_only and not isinstance(t, FakeTensor)
        ):
            return
        storage = t.untyped_storage()
        key = id(storage)
        nbytes = self._rounded(storage.nbytes())
        entry = self.storages.get(key)
        if entry is None:
            entry = self.storages[key] = [0, "rest"]
            weakref.finalize(storage, self._free, key)
        if tag is not None and tag != entry[1]:
            self._move(entry[1], -entry[0])
            self._move(tag, entry[0])
            entry[1] = tag
        if nbytes != entry[0]:
            self._move(entry[1], nbytes - entry[0])
            entry[0] = nbytes
            self._note_peak()

    def tag(self, tensors, name: str) -> None:
        for t in _tensors(list(tensors)):
            self.track(t, name)

    def _move(self, tag: str, nbytes: int) -> None:
        self.live += nbytes
        self.by_tag[tag] += nbytes
        if tag in self.SHARDED:
            self.sharded += nbytes

    def _note_peak(self, extra: int = 0, tag: str = "workspace") -> None:
        """A moment to consider: the live bytes plus ``extra`` transient bytes held by a kernel."""
        if self.live + extra > self.peak:
            self.peak = self.live + extra
            self.peak_by_tag = {**self.by_tag, tag: extra} if extra else dict(self.by_tag)
        for world in self.worlds:
            value = self.live + extra - self.sharded + self.sharded // world
            if value > self.peak_sharded[world]:
                self.peak_sharded[world] = value

    def _free(self, key: int) -> None:
        nbytes, tag = self.storages.pop(key)
        self._move(tag, -nbytes)

    def reset_peak(self) -> None:
        """Forget the peaks so far: they restart from what is live now."""
        self.peak, self.peak_by_tag = self.live, dict(self.by_tag)
        self.peak_sharded = {w: self.live - self.sharded + self.sharded // w for w in self.worlds}

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        for t in _tensors((args, kwargs)):  # tensors made outside any op (converted constants, loaded weights)
            self.track(t)
        out = func(*args, **kwargs)
        for t in _tensors(out):
            self.track(t)
        workspace = self.workspaces.get(func)
        if workspace is not None:  # held while the kernel runs, with its inputs and outputs
            self._note_peak(self._rounded(workspace(args, kwargs)))
        return out
