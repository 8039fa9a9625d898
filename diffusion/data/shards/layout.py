"""Which loader worker of which rank reads which shards in an epoch, and the seeded draws its shuffle buffer makes.

Every rank computes the same shard order for an epoch: a permutation of the shard list seeded by (seed, epoch)
(identity without ``shuffle``). The epoch's reading is cut into ``world_size × max(1, num_workers)`` *slots*, slot
``g = rank · workers + worker``:

- with at least as many shards as slots, slot g reads the shards ``order[g::slots]`` whole, so every sample is read
  once per epoch; shards that do not divide evenly give some slots (and ranks) one shard more;
- with fewer shards than slots, every slot still gets data: slot g reads shard ``order[g % n]`` and keeps every
  k-th sample of it (k = the number of slots sharing that shard, offset by its place among them): each sample is
  still seen once, but each shard is read k times (more shards, ``tools/make_shards.py --per-shard``, avoid it).

Ranks with more samples than others run their epochs faster; the stream is endless, so DDP steps stay in lockstep
and each rank still sees each of its samples once per (its own) epoch. ``describe_layout`` says all of it.
"""

from dataclasses import dataclass

import numpy as np

_MASK = (1 << 64) - 1


def mix64(x: int) -> int:
    """SplitMix64's finaliser: a well-mixed 64-bit function of ``x`` (the counter-based draws below)."""
    x = (x + 0x9E3779B97F4A7C15) & _MASK
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _MASK
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _MASK
    return x ^ (x >> 31)


class Draws:
    """Counter-based random integers: draw n is a function of (key, n) alone, so the whole generator state is
    ``count`` (an int a checkpoint holds), and a resumed run continues the same sequence."""

    def __init__(self, *key: int, count: int = 0) -> None:
        self.key, self.count = 0, count
        for part in key:
            self.key = mix64(self.key ^ (part & _MASK))

    def below(self, n: int) -> int:
        """An integer in [0, n) (n < 2**32: the modulo bias is below 2**-32)."""
        self.count += 1
        return mix64(self.key ^ mix64(self.count)) % n


@dataclass(frozen=True)
class Slot:
    """What one (rank, worker) reads in an epoch: ``shards`` (indices into the shard list, in reading order) and,
    when shards are shared, only samples whose index in the shard is ``part`` modulo ``parts``."""

    index: int
    shards: tuple[int, ...]
    part: int = 0
    parts: int = 1


def shard_order(num_shards: int, seed: int, epoch: int, shuffle: bool = True) -> list[int]:
    """The epoch's shard order, the same on every rank."""
    if not shuffle:
        return list(range(num_shards))
    return np.random.default_rng([seed, epoch]).permutation(num_shards).tolist()


def epoch_slots(num_shards: int, num_slots: int, seed: int, epoch: int, shuffle: bool = True) -> list[Slot]:
    """All ``num_slots`` slots of an epoch (see the module docstring)."""
    order = shard_order(num_shards, seed, epoch, shuffle)
    if num_shards >= num_slots:
        return [Slot(g, tuple(order[g::num_slots])) for g in range(num_slots)]
    slots = []
    for g in range(num_slots):
        sharing = list(range(g % num_shards, num_slots, num_shards))  # the slots reading this shard
        slots.append(Slot(g, (order[g % num_shards],), sharing.index(g), len(sharing)))
    return slots


def describe_layout(
    num_shards: int, world_size: int, workers: int, shard_samples: list[int] | None = None
) -> tuple[str, bool]:
    """One paragraph on how an epoch is split (shards per rank, samples per rank when counts are known, read
    amplification) and whether the split is uneven."""
    slots_per_rank = max(1, workers)
    slots = epoch_slots(num_shards, world_size * slots_per_rank, seed=0, epoch=0, shuffle=False)
    text = f"{num_shards} shard(s) over {world_size} rank(s) x {slots_per_rank} reader(s) per rank"
    if num_shards < len(slots):
        text += (
            f": fewer shards than readers, so each shard is read by up to {max(s.parts for s in slots)} readers "
            "that keep every k-th sample (each sample still seen once per epoch; more shards avoid the extra reading)"
        )
    per_rank = [slots[r * slots_per_rank : (r + 1) * slots_per_rank] for r in range(world_size)]
    shards = [sum(len(s.shards) / s.parts for s in rank) for rank in per_rank]
    uneven = len({round(n, 6) for n in shards}) > 1
    if shard_samples is not None:
        samples = [sum(shard_samples[i] // s.parts + (s.part < shard_samples[i] % s.parts) for s in rank for i in
                       s.shards) for rank in per_rank]  # fmt: skip
        uneven = len(set(samples)) > 1
        text += f"; samples per rank per epoch (manifest): {samples}"
    else:
        text += f"; shards per rank per epoch: {[round(n, 2) for n in shards]}"
    if uneven:
        text += (
            " - uneven: ranks with fewer samples start their next epoch sooner (the stream is endless, so every "
            "rank takes the same number of steps and still sees each of its samples once per epoch; the exact "
            "split changes with the epoch's shard order)"
        )
    return text, uneven
