"""The memory planner: the largest per-GPU batch of a real config that fits a GPU (``--plan CONFIG --gpu NAME``).

For each variant of the config (gradient checkpointing on / off x frozen copies as configured / fp32 / bf16,
:mod:`diffusion.bench.config_step`) and each FSDP world size W in (1, 2, 8):

1. Memory is near-affine in the batch: one step is simulated at two batch sizes (``FIT``) and the per-rank peak
   ``a + s * batch`` solved for the largest batch under the GPU's usable memory (``predicted`` in the result).
2. The answer is refined by secants through the simulations nearest the budget (the peak is convex piecewise affine
   in the batch: a moment dominated by weights and optimizer state at small batches, by activations at large ones)
   and verified: the batch reported fits and the next one does not, both simulated. Every simulation is cached by
   (variant, batch): one simulation serves all world sizes and GPUs.

Per-rank memory under FSDP2 (the trainer's ``train.parallel='fsdp'``: every block its own unit, then the root; the
frozen teacher / target sharded alike): what FSDP shards (trained weights, gradients, optimizer state, the EMA
shadow and the frozen copies) divided by W, followed op by op (``LiveBytes.peak_sharded``), plus the gather buffers:
the root's parameters, which FSDP2 keeps gathered from the forward to the backward, and two gathered units (the one
computing and the one prefetched), each held beyond their own shard, ``(1 - 1/W) (root + 2 unit)``, plus one unit's
unsharded gradients before their reduce-scatter. Activations do not shrink with W (batch per GPU). W = 1 is the
trainer without FSDP (one process holds everything). All-reduce / reduce-scatter communication buffers of NCCL are
not counted.

The usable memory of a GPU is its nominal memory minus a context headroom, minus a fragmentation share of the rest
(:func:`diffusion.bench.gpus.usable_bytes`; both printed with the plan).
"""

from __future__ import annotations

import time
from collections.abc import Callable

from diffusion.bench.config_step import Variant, frozen_variants, simulate_config_step
from diffusion.bench.gpus import CONTEXT_GIB, FRAGMENTATION, GIB, get_gpu, usable_bytes

WORLDS = (1, 2, 8)
FIT = (1, 4)  # the two batch sizes of the affine fit
MAX_BATCH = 4096


def rank_bytes(sim: dict, world: int) -> int:
    """Per-rank peak of a simulated step under FSDP on ``world`` GPUs (``world == 1``: no FSDP)."""
    if world == 1:
        return sim["peak"]
    gather = (1 - 1 / world) * (sim["root"] + 2 * sim["unit"]) + sim["unit"]
    return int(sim["peak_sharded"][world] + gather)


def largest_batch(bytes_at: Callable[[int], int], budget: int, start: tuple[int, ...] = FIT) -> tuple[int, list[int]]:
    """The largest batch whose bytes are at most ``budget`` (memory grows with the batch), with the answer ``b`` and
    ``b + 1`` both simulated; also returns the batches simulated. 0 when batch 1 does not fit.

    Starts from the affine fit through ``start`` and refines by secants through the simulated points nearest the
    budget: the peak is a maximum over moments of the step of functions affine in the batch (convex, piecewise
    affine), so the slope between two small batches can be lower than near the answer. A secant that does not halve
    the bracket is followed by a bisection step."""
    known: dict[int, int] = {}

    def at(b: int) -> int:
        if b not in known:
            known[b] = bytes_at(b)
        return known[b]

    for b in start:
        at(b)
    width = MAX_BATCH + 1
    while True:
        fits = [b for b, v in known.items() if v <= budget]
        over = [b for b, v in known.items() if v > budget]
        lo, hi = max(fits, default=0), min(over, default=MAX_BATCH + 1)
        if hi - lo <= 1:
            break
        near = sorted(known, key=lambda b: abs(known[b] - budget))[:2] if not fits or not over else [lo, hi]
        if lo == 0:
            near = [b for b in near if b]  # batch 0 is not simulated
        b1, b2 = sorted(near) if len(near) == 2 else (near[0], near[0])
        slope = (known[b2] - known[b1]) / (b2 - b1) if b2 > b1 else 0
        guess = b1 + int((budget - known[b1]) // slope) if slope > 0 else 2 * lo + 1
        if over and hi - lo > width / 2:  # a bracket the last secant did not halve: bisect
            guess = (lo + hi) // 2
        width = hi - lo if over else width
        at(min(max(guess, lo + 1), hi - 1))
    if lo < MAX_BATCH:
        at(lo + 1)
    return lo, sorted(known)


class Planner:
    """Simulations of one config, cached by (variant, batch); :meth:`plan` answers for one GPU."""

    def __init__(
        self,
        config: str,
        worlds: tuple[int, ...] = WORLDS,
        log: Callable[[str], None] = print,
        variants: list[Variant] | None = None,
    ):
        from mmengine.config import Config

        self.config, self.cfg, self.worlds, self.log = config, Config.fromfile(config), worlds, log
        self._variants = variants
        self.cache: dict[tuple[Variant, int], dict] = {}
        self.seconds = 0.0

    def variants(self) -> list[Variant]:
        """``variants`` if given, else checkpointing on / off x the config's frozen-copy variants."""
        if self._variants is not None:
            return list(self._variants)
        return [Variant(ckpt, frozen) for ckpt in (True, False) for frozen in frozen_variants(self.cfg)]

    def simulate(self, variant: Variant, batch: int) -> dict:
        key = (variant, batch)
        if key not in self.cache:
            start = time.perf_counter()
            sharded = tuple(w for w in self.worlds if w > 1)
            self.cache[key] = simulate_config_step(self.cfg, variant, batch, sharded)
            self.seconds += time.perf_counter() - start
            self.log(f"  simulated {variant.describe()}, batch {batch}: {self.cache[key]['peak'] / GIB:.2f} GiB")
        return self.cache[key]

    def predict(self, variant: Variant, world: int, budget: int) -> tuple[int, float, float]:
        """The affine fit's answer: (largest batch, a, s) with per-rank bytes ``a + s * batch`` through ``FIT``."""
        b1, b2 = FIT
        m1, m2 = (rank_bytes(self.simulate(variant, b), world) for b in FIT)
        slope = (m2 - m1) / (b2 - b1)
        intercept = m1 - slope * b1
        batch = int((budget - intercept) // slope) if slope > 0 else MAX_BATCH
        return min(max(batch, 0), MAX_BATCH), intercept, slope

    def plan(self, gpu_name: str, context_gib: float = CONTEXT_GIB, fragmentation: float = FRAGMENTATION) -> dict:
        """Per variant and world size: predicted and verified largest batch, the fit, and the peak at the answer."""
        gpu = get_gpu(gpu_name)
        budget = usable_bytes(gpu, context_gib, fragmentation)
        return dict(
            config=self.config,
            gpu=gpu.name,
            memory_gib=gpu.memory_gib,
            context_gib=context_gib,
            fragmentation=fragmentation,
            usable=budget,
            configured_batch=self.cfg["train"]["batch_size"],
            rows=self.rows(budget),
        )

    def rows(self, budget: int) -> list[dict]:
        """Per variant and world size, the largest batch whose simulated per-rank peak is at most ``budget`` bytes."""
        rows = []
        for variant in self.variants():
            for world in self.worlds:
                predicted, intercept, slope = self.predict(variant, world, budget)
                batch, checked = largest_batch(
                    lambda b, v=variant, w=world: rank_bytes(self.simulate(v, b), w), budget, FIT
                )
                peak = rank_bytes(self.simulate(variant, batch), world) if batch else None
                rows.append(
                    dict(
                        checkpointing=variant.checkpointing,
                        frozen=variant.frozen,
                        world=world,
                        predicted=predicted,
                        batch=batch,
                        checked=checked,
                        intercept=intercept,
                        slope=slope,
                        peak=peak,
                    )
                )
        return rows


def plan_markdown(plan: dict) -> str:
    """One GPU's plan as a table: rows = variants, columns = FSDP world sizes (largest batch per GPU)."""
    worlds = sorted({r["world"] for r in plan["rows"]})
    head = (
        f"Simulated plan for {plan['config']} on {plan['gpu']} ({plan['memory_gib']:g} GiB; usable for allocations "
        f"{plan['usable'] / GIB:.1f} GiB = ({plan['memory_gib']:g} - {plan['context_gib']:g} GiB CUDA context "
        f"and driver) x (1 - {plan['fragmentation']:.0%} fragmentation)); the config trains at batch "
        f"{plan['configured_batch']} per GPU. Largest batch per GPU (simulated peak at that batch, GiB):"
    )
    header = ["gradient checkpointing", "frozen copies", *(f"{w} GPU" if w == 1 else f"FSDP {w} GPUs" for w in worlds)]
    lines = [head, "", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    variants = []
    for r in plan["rows"]:
        if (r["checkpointing"], r["frozen"]) not in variants:
            variants.append((r["checkpointing"], r["frozen"]))
    for ckpt, frozen in variants:
        cells = []
        for w in worlds:
            r = next(x for x in plan["rows"] if (x["checkpointing"], x["frozen"], x["world"]) == (ckpt, frozen, w))
            cells.append(f"{r['batch']} ({r['peak'] / GIB:.1f})" if r["batch"] else "does not fit")
        lines.append(f"| {'on' if ckpt else 'off'} | {frozen} | " + " | ".join(cells) + " |")
    return "\n".join(lines)
