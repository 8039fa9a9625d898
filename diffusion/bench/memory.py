"""Memory measurement shared by both modes of ``tools/benchmark_memory.py``: PixArt-delta Table 1 / §3.3 (training
memory of LCM distillation: teacher, student and EMA target of 0.6 B parameters each) and §4 (8-bit inference).

- :func:`held_bytes`: bytes of tensors by owner, each storage counted once (tied weights, views), looking inside
  tensor subclasses (a DTensor's local shard under FSDP, torchao's int8 data + scales), meta tensors as 0;
- :class:`Peak`: peak memory of a region above its start (CUDA allocator, or resident memory sampled every 2 ms);
  :func:`process_peaks`: the peaks of the whole process so far (``getrusage``, CUDA);
- :func:`trainer_owners`: what a :class:`~diffusion.engine.Trainer` holds, by owner;
- :func:`rows_markdown` / :func:`ranks_markdown` / :func:`write_json`: the reports of the two modes.
"""

from __future__ import annotations

import json
import resource
import threading
import time
from collections.abc import Iterable, Iterator
from pathlib import Path

import torch
from torch import nn

GB, MIB = 1024**3, 2**20
TRAINER_OWNERS = ("trained", "frozen", "ema", "optimizer", "encoding", "validation")


def _storages(t: torch.Tensor) -> Iterator[tuple[tuple[int, str], int]]:
    """(storage key, bytes) of what ``t`` holds; a tensor subclass by its inner tensors (DTensor: the local shard)."""
    if hasattr(t, "to_local"):  # DTensor
        t = t.to_local()
    if hasattr(t, "__tensor_flatten__"):
        names, _ = t.__tensor_flatten__()
        for inner in (getattr(t, name) for name in names):
            yield from _storages(inner) if torch.is_tensor(inner) else ()
        return
    if t.device.type == "meta":
        return
    storage = t.untyped_storage()
    yield (storage.data_ptr(), t.device.type), storage.nbytes()


def tensor_bytes(tensors: Iterable[torch.Tensor], seen: set | None = None) -> int:
    """Bytes of the storages behind ``tensors``, each counted once; ``seen`` carries the storages already counted."""
    seen = set() if seen is None else seen
    total = 0
    for t in tensors:
        for key, nbytes in _storages(t):
            if key not in seen:
                seen.add(key)
                total += nbytes
    return total


def held_bytes(owners: dict[str, Iterable[torch.Tensor]]) -> dict[str, int]:
    """Bytes by owner plus ``total``; a storage two owners share counts under the first of them only."""
    seen: set = set()
    out = {name: tensor_bytes(tensors, seen) for name, tensors in owners.items()}
    out["total"] = sum(out.values())
    return out


def module_tensors(*modules: nn.Module | None) -> list[torch.Tensor]:
    """Parameters and buffers of ``modules`` (``None`` skipped)."""
    return [t for m in modules if m is not None for t in [*m.parameters(), *m.buffers()]]


def optimizer_tensors(optimizer: torch.optim.Optimizer) -> list[torch.Tensor]:
    """The optimizer's state tensors (Adam: two moments and a step count per parameter)."""
    return [v for state in optimizer.state.values() for v in state.values() if torch.is_tensor(v)]


def trainer_owners(trainer) -> dict[str, list[torch.Tensor]]:
    """The model tensors a trainer holds on this rank: the trained network, the method's frozen networks (LCM:
    teacher and EMA target), the EMA shadow, optimizer state, the frozen codec / T5 / annotator that encode batches on
    the fly (training from shards), and validation (the grids' pipeline: its codec; T5 is freed after the prompts
    are encoded)."""
    encoder = getattr(trainer.data, "encoder", None)  # EncodedBatches only
    pipeline = trainer.validator.pipeline if trainer.validator is not None else None
    codec = getattr(pipeline, "codec", None)
    return dict(
        trained=module_tensors(trainer.model),
        frozen=module_tensors(*trainer.method.frozen_networks()),
        ema=list(trainer.ema.shadow.values()) if trainer.ema is not None else [],
        optimizer=optimizer_tensors(trainer.optimizer),
        encoding=module_tensors(
            *(
                [encoder.codec, encoder.text_encoder.model] + ([encoder.annotator] if encoder.annotator else [])
                if encoder is not None
                else []
            )
        ),
        validation=module_tensors(codec if isinstance(codec, nn.Module) else None),
    )


class Peak:
    """Peak memory of the enclosed code (``.peak``, bytes): ``torch.cuda.max_memory_allocated`` on a GPU, the
    process's resident memory sampled every 2 ms on a thread on a CPU. ``now()`` is the current value, the baseline
    to subtract for the peak above a starting point."""

    def __init__(self, device: str | torch.device):
        self.cuda = torch.device(device).type == "cuda"

    def now(self) -> int:
        if self.cuda:
            return torch.cuda.memory_allocated()
        import psutil

        return psutil.Process().memory_info().rss

    def __enter__(self) -> Peak:
        self.peak, self.running = self.now(), True
        if self.cuda:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        else:
            self.thread = threading.Thread(target=self._sample, daemon=True)
            self.thread.start()
        return self

    def _sample(self) -> None:
        while self.running:
            self.peak = max(self.peak, self.now())
            time.sleep(0.002)

    def __exit__(self, *exc) -> None:
        if self.cuda:
            torch.cuda.synchronize()
            self.peak = torch.cuda.max_memory_allocated()
        else:
            self.running = False
            self.thread.join()
            self.peak = max(self.peak, self.now())


def process_peaks() -> dict[str, float | None]:
    """MiB: the process's peak resident set size since it started (``getrusage``; Linux reports KiB) and the CUDA
    allocator's peak since the last reset (``None`` without a GPU)."""
    cuda = torch.cuda.max_memory_allocated() / MIB if torch.cuda.is_available() else None
    return dict(peak_rss_mib=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, cuda_peak_mib=cuda)


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return lines + ["| " + " | ".join(row) + " |" for row in rows]


def rows_markdown(result: dict, paper: dict[str, str]) -> str:
    """The synthetic rows: weights / gradients / optimizer state / the rest of each row's peak, in GB, against the
    paper's figure ``paper[row]``; a row that could not run says why."""
    simulated = result.get("simulated", False)
    cpu = "CPU" in result["machine"] and not simulated
    peak_name = "simulated peak allocated" if simulated else "peak RSS above start" if cpu else "peak allocated"
    header = ["row", "batch × image", "weights (GB)", "grads (GB)", "optimizer (GB)", "activations, rest (GB)"]
    header.append(f"{peak_name} (GB)")
    rows = []
    for row, r in result["rows"].items():
        if "error" in r:
            why = f"{'not simulated' if simulated else 'skipped'}: {r['error']}"
            rows.append([row, "", why, "", "", "", "", paper[row]])
            continue
        shape = f"{r['batch']} × {r['resolution']}²" if "batch" in r else ""
        if "at_peak" in r:  # simulated: the split at the moment of the peak (gradients may not be live yet)
            split = r["at_peak"]
            held = [split.get("weights", 0) + split.get("frozen", 0), split.get("grads", 0), split.get("optimizer", 0)]
            cells = [*held, r["peak"] - sum(held), r["peak"]]
        else:
            rest = r["peak"] - r["weights"] - r["grads"] - r["optimizer"]
            cells = [r["weights"], r["grads"], r["optimizer"], rest, r["peak"]]
        rows.append([row, shape, *(f"{c / GB:.2f}" for c in cells), paper[row]])
    first = f"Machine: {result['machine']}; {result['size']}; batch and image size per row"
    first += "; CPU: reduced size, resident memory (not the paper's GPU numbers)" if cpu else ""
    if simulated:
        first += (
            "; SIMULATED on fake tensors with CUDA's autocast and attention kernels (allocated bytes, as "
            "torch.cuda.max_memory_allocated; the peak of the second optimizer step, split as it stands at that "
            "moment), not measured on a GPU"
        )
    return "\n".join([first, "", *_table([*header, "paper"], rows)])


def ranks_markdown(result: dict) -> str:
    """The trainer run: per rank, MiB of the tensors held by owner (this rank's shards only) and the peaks."""
    header = [*TRAINER_OWNERS, "**total held**", "peak RSS", "peak above start", "CUDA peak"]
    rows = []
    for r in result["ranks"]:
        held = [f"{r['tensors_mib'][k]:.1f}" for k in TRAINER_OWNERS] + [f"**{r['tensors_mib']['total']:.1f}**"]
        cuda = "—" if r["cuda_peak_mib"] is None else f"{r['cuda_peak_mib']:.0f}"
        peaks = [f"{r['peak_rss_mib']:.0f}", f"{r['peak_above_start_mib']:.0f}", cuda]
        rows.append([f"{r['rank']} / {r['world']} ({r['parallel']})", *held, *peaks])
    first = f"Machine: {result['machine']}; {result['config']}, {result['steps']} steps (MiB, per rank)"
    return "\n".join([first, "", *_table(["rank", *header], rows)])


def write_json(path: str | Path | None, result: dict) -> None:
    """``result`` as JSON at ``path`` (nothing when ``path`` is None)."""
    if path:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(path).write_text(json.dumps(result, indent=1))


def compare_markdown(simulated: dict, measured: dict) -> str:
    """Row by row: the simulated peak (``--simulate``), the measured ``torch.cuda.max_memory_allocated`` peak of the
    same row and size, and measured / simulated. A CPU run has no allocated-bytes peak (its peak is resident memory,
    which counts the allocator's and the libraries' pages too): its column says so, with that number beside."""
    gpu = "CPU" not in measured["machine"]
    header = ["row", "batch × image", "simulated peak (GB)", "measured max_memory_allocated (GB)"]
    header.append("measured / simulated")
    rows = []
    for row in dict.fromkeys([*simulated["rows"], *measured["rows"]]):
        sim, real = simulated["rows"].get(row, {"error": "not run"}), measured["rows"].get(row, {"error": "not run"})
        shape = next((f"{r['batch']} × {r['resolution']}²" for r in (sim, real) if "batch" in r), "")
        sim_cell = f"{sim['peak'] / GB:.2f}" if "error" not in sim else f"not simulated: {sim['error']}"
        if "error" in real:
            real_cell, ratio = f"not measured: {real['error']}", "—"
        elif not gpu:
            real_cell, ratio = f"n/a on a CPU (peak RSS above start: {real['peak'] / GB:.2f})", "—"
        else:
            real_cell = f"{real['peak'] / GB:.2f}"
            ratio = f"{real['peak'] / sim['peak']:.3f}" if "error" not in sim and sim["peak"] else "—"
        rows.append([row, shape, sim_cell, real_cell, ratio])
    first = (
        f"Simulated: {simulated['machine']}, {simulated['size']}. Measured: {measured['machine']}, "
        f"{measured['size']}. Both are allocated bytes above what the process held before building the row; the "
        "measured peak leaves out the CUDA context and the allocator's cached, unallocated blocks, as the simulation "
        "does."
    )
    return "\n".join([first, "", *_table(header, rows)])
