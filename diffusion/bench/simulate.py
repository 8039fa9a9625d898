"""Simulated GPU memory of the memory rows (PixArt-delta Table 1 / §3.3, §4) without a GPU: ``--simulate``.

The rows of :mod:`diffusion.bench.memory_rows` are built and run with the project's real model, method, optimizer and
pipeline code on fake tensors (:mod:`diffusion.bench.fake`), and the live bytes of the simulated device are counted
op by op. The peak is *allocated* memory, the quantity ``torch.cuda.max_memory_allocated`` reports (not the reserved
memory the caching allocator holds on top, nor the CUDA context). What is modelled, and the assumption behind each:

- **Allocator**: every allocation rounded up to 512 bytes (the caching allocator's block); a block reused without a
  split (a larger cached block handed out whole) is not modelled.
- **Attention**: FlashAttention-2 / the memory-efficient kernel, with their backward scratch memory
  (:mod:`diffusion.bench.cuda_rules`), never the attention matrix the CPU's math path would store.
- **Autocast**: CUDA's per-op cast rules, emulated on the CPU's autocast key (:mod:`diffusion.bench.cuda_rules`),
  including the autocast cache of half-precision weight copies that lives as long as the autocast region.
- **Gradient checkpointing, fused AdamW (the Σ rows: CAME, unfused, its temporaries counted), the GradScaler, frozen
  copies in fp32 / bf16 / fp16**: the real code runs,
  so nothing is assumed: only each block's input is kept in the forward and the block is recomputed in the backward
  (``torch.utils.checkpoint``); AdamW's fused kernel updates in place (``exp_avg``, ``exp_avg_sq``, a 0-d ``step`` per
  parameter, no temporaries); a frozen copy takes the dtype it is given.
- **Steady state**: two optimizer steps; the peak reported is the second's (Adam state allocated, gradients freed by
  ``zero_grad(set_to_none=True)`` between steps); ``peak_first_step`` is the first's.
- **Devices**: training is simulated on fake *CPU* tensors standing for the GPU (autograd needs a CUDA context for
  CUDA tensors, even fake ones; the CUDA rules above are applied to them), inference on fake CUDA tensors (host
  tensors, such as a T5 waiting on the CPU in the lean row, are then not counted).
- **Data-dependent control flow**: integer, boolean and float64 tensors of at most 4M elements computed only from
  constants (schedules, timesteps, caption masks) carry their real values; the batch's captions have 20 valid tokens
  of 120 (Σ: of 300) as in the measured rows.

A row the simulation cannot run reports why (``error``) instead of a number. Nothing outlives the call: the autocast
registrations are destroyed, the fused-attention and fake modes exited, the global RNG state restored and the
position-table cache (which would hold fake tensors) cleared.
"""

from __future__ import annotations

import contextlib
import time
import warnings
from collections.abc import Iterator

import torch

from diffusion.bench import get_size
from diffusion.bench.cuda_rules import ATTENTION_WORKSPACES, cuda_autocast_on_cpu, fused_attention_kernels
from diffusion.bench.fake import CUDA_BLOCK, LiveBytes, ValueFakeMode, dispatch_cache_scope
from diffusion.bench.memory import module_tensors, optimizer_tensors
from diffusion.bench.memory_rows import (
    BATCH,
    ROWS,
    TrainSetup,
    build_row_infer,
    build_row_train,
    infer_call,
    row_batch,
    row_size,
    train_step,
)

TARGETS = ("cuda", "cpu")


def _clear_caches() -> None:
    from diffusion.model.embeddings import _sincos_table

    _sincos_table.cache_clear()  # it memoises position tables: fake ones must not reach later real calls


@contextlib.contextmanager
def simulation(
    target: str = "cuda", device: str = "cpu", fake: bool = True, worlds: tuple[int, ...] = ()
) -> Iterator[LiveBytes]:
    """A :class:`~diffusion.bench.fake.LiveBytes` counting ``device`` inside the block, on fake tensors.

    ``target='cuda'``: CUDA's autocast rules, fused attention kernels and allocator rounding; ``'cpu'``: the code runs
    with the CPU's own rules (what the validation against a real CPU run uses). ``fake=False`` counts a real run
    with the same counter and rules (the validation's reference; CPU target only: the fused kernels have no CPU
    code). ``worlds``: the FSDP world sizes whose per-rank peaks the counter follows (``LiveBytes.peak_sharded``).
    """
    if not fake and target != "cpu":
        raise ValueError("a real (fake=False) run can only be counted with target='cpu'")
    if target not in TARGETS:
        raise ValueError(f"unknown simulation target {target!r}; expected one of {TARGETS}")
    cuda = target == "cuda"
    counter = LiveBytes(device, CUDA_BLOCK if cuda else 1, ATTENTION_WORKSPACES if cuda else None, fake, worlds)
    with contextlib.ExitStack() as stack:
        stack.callback(_clear_caches)
        stack.enter_context(warnings.catch_warnings())  # deepcopy of a fake tensor asks for its (null) data pointer
        warnings.filterwarnings("ignore", message="Accessing the data pointer of FakeTensor")
        stack.enter_context(torch.random.fork_rng(devices=[]))
        if fake:
            stack.enter_context(dispatch_cache_scope())
            stack.enter_context(ValueFakeMode())
        if cuda:
            stack.enter_context(cuda_autocast_on_cpu())
            stack.enter_context(fused_attention_kernels())
        stack.enter_context(counter)
        _clear_caches()
        yield counter


def storage_bytes(tensors, counter: LiveBytes) -> int:
    """Bytes of the distinct storages behind ``tensors``, rounded as ``counter`` rounds them."""
    seen = {id(t.untyped_storage()): t.untyped_storage().nbytes() for t in tensors}
    return sum(counter._rounded(n) for n in seen.values())


def run_train(s: TrainSetup, counter: LiveBytes) -> dict:
    """Two steps of a built training row, counted: weights, gradients, optimizer state and the peaks."""
    counter.tag(module_tensors(s.model), "weights")
    counter.tag(module_tensors(*s.frozen), "frozen")
    hooks = [p.register_post_accumulate_grad_hook(lambda p: counter.tag([p.grad], "grads")) for p in s.params]
    counter.reset_peak()
    train_step(s)
    first = counter.peak
    counter.tag(optimizer_tensors(s.optimizer), "optimizer")
    counter.reset_peak()
    train_step(s)
    for hook in hooks:
        hook.remove()
    return dict(
        weights=storage_bytes(module_tensors(s.model, *s.frozen), counter),
        grads=storage_bytes(s.params, counter),
        optimizer=storage_bytes(optimizer_tensors(s.optimizer), counter),
        peak=counter.peak,
        peak_first_step=first,
        at_peak=dict(counter.peak_by_tag),
    )


def simulate_row(row: str, size_name: str = "full", target: str = "cuda", fake: bool = True) -> dict:
    """One row of ``ROWS`` simulated at ``size_name``: bytes of weights / grads / optimizer state and the peak,
    plus ``simulated``, ``target`` and the split of the peak by owner (``at_peak``); or ``error`` saying why not."""
    infer = ROWS[row].kind == "infer"
    device = "cuda" if infer and target == "cuda" else "cpu"
    start = time.perf_counter()
    try:
        with simulation(target, device, fake) as counter:
            if infer:
                pipe, modules = build_row_infer(row, size_name, device)
                counter.tag(module_tensors(*modules), "weights")
                weights = counter.by_tag["weights"]
                counter.reset_peak()
                infer_call(pipe)
                out = dict(weights=weights, grads=0, optimizer=0, peak=counter.peak, at_peak=dict(counter.peak_by_tag))
            else:
                s = build_row_train(row, size_name, device, fused=True)
                out = run_train(s, counter)
    except Exception as err:  # a row the fake tensors cannot run says why instead of printing a number
        return {"error": f"simulation failed: {type(err).__name__}: {str(err).splitlines()[0][:200]}"}
    out.update(simulated=fake, target=target, seconds=time.perf_counter() - start)
    out.update(batch=row_batch(row, size_name), resolution=row_size(row, size_name).resolution)
    out["at_peak"] = {k: v for k, v in out["at_peak"].items() if v}
    return out


def simulate_rows(rows: list[str], size_name: str = "full") -> dict:
    """Every row in ``rows`` simulated (target CUDA), in the shape of ``tools/benchmark_memory.py --json``."""
    from diffusion.bench import machine

    results = {row: simulate_row(row, size_name) for row in rows}
    size = get_size(size_name).describe()
    return dict(
        machine=f"simulated CUDA on fake tensors ({machine()})",
        size=size,
        batch=BATCH[size_name],
        simulated=True,
        rows=results,
    )
