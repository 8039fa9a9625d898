"""The endless stream of collated batches one rank trains on from shards, and its exact position.

Each epoch this rank's readers (one per DataLoader worker, layout.py) run in worker processes; their batches are
taken in a fixed order: round robin over the readers starting at ``next``, a reader leaving the rotation after its
end message (the order a DataLoader gives for an iterable dataset, whose workers then need no coordination). The
stream checks that order itself (a small reorder queue), so it does not rest on the DataLoader's internals.

The position is the epoch, the reader whose turn is next, and every reader's state after its last batch taken
(reader.py): :meth:`ShardStream.state_dict` gathers every rank's (a collective under torch.distributed: call it on
every rank); :meth:`ShardStream.load_state_dict` restarts the epoch's readers from it, the DataLoader's worker 0
running the reader whose turn is next. The batches that follow are those an uninterrupted run would have taken.
"""

from collections import deque
from collections.abc import Callable, Iterator

import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from diffusion.data.shards.layout import Slot, describe_layout, epoch_slots
from diffusion.data.shards.reader import SlotReader
from diffusion.data.workers import worker_init

STATE_VERSION = 1


def _identity(message: dict) -> dict:
    return message


class EpochSource(IterableDataset):
    """One rank's epoch for a DataLoader: worker ``w`` runs reader ``(w + rotation) % len(slots)``."""

    def __init__(self, dataset, slots: list[Slot], states: list[dict | None], rotation: int, batch_size: int,
                 seed: int, epoch: int) -> None:  # fmt: skip
        super().__init__()
        self.urls, self.spec, self.buffer_size = dataset.urls, dataset.spec, dataset.shuffle_buffer
        self.slots, self.states, self.rotation = slots, states, rotation
        self.batch_size, self.seed, self.epoch = batch_size, seed, epoch

    def __iter__(self) -> Iterator[dict]:
        info = get_worker_info()
        local = ((info.id if info is not None else 0) + self.rotation) % len(self.slots)
        reader = SlotReader(
            self.urls, self.slots[local], self.spec, self.batch_size, self.buffer_size, self.seed, self.epoch,
            self.states[local],
        )  # fmt: skip
        return iter(reader)


def _difference(key: str, saved, now) -> str:
    if key != "shards":
        return f"{key}: saved {saved}, now {now}"
    saved = saved or []
    if len(saved) == len(now):
        first = next(a for a, b in zip(saved, now) if a != b)
        return f"shards: {len(now)} but other names (first differing: saved {first})"
    return f"shards: saved {len(saved)}, now {len(now)}"


def _after(active: list[int], current: int) -> int:
    """The reader after ``current`` in the rotation of ``active`` ones (``current`` may have just left it)."""
    later = [i for i in active if i > current]
    return (later or active or [0])[0]


class ShardStream:
    """Iterator of collated batches from a :class:`~diffusion.data.shards.ShardDataset` for one rank.

    A batch is ``image`` (B, 3, h, w) uint8 (one bucket), ``prompt`` list[str], ``img_hw`` (B, 2), ``aspect_ratio``
    (B, 1), ``key`` and ``shard`` list[str] and with ``load_control`` ``control`` (B, 3, h, w) uint8
    (``pixels_to_model`` turns images into the [-1, 1] the codecs encode).

    Attributes:
        epoch, batch_in_epoch: where this rank is; ``on_epoch(epoch)`` is called as each epoch starts.
        dropped: samples left in partial buckets by the epochs this process finished (drop_last).
        last_epoch: ``{"epoch", "batches", "dropped"}`` of the last finished epoch (:meth:`epoch_report`).
        notes: what loading a position had to say (another layout with ``on_layout_change='next_epoch'``, a
            changed batch size).
    """

    def __init__(self, dataset, batch_size: int, rank: int = 0, world_size: int = 1, num_workers: int = 0,
                 seed: int = 0) -> None:  # fmt: skip
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} outside world_size {world_size}")
        self.dataset, self.batch_size, self.rank, self.world_size = dataset, batch_size, rank, world_size
        self.num_workers, self.seed = num_workers, seed
        self.readers = max(1, num_workers)  # readers per rank; 0 workers: one, in this process
        self.epoch, self.batch_in_epoch, self.dropped = 0, 0, 0
        self.last_epoch: dict | None = None
        self._states: list[dict | None] = [None] * self.readers
        self._next = 0
        self.on_epoch: Callable[[int], None] | None = None
        self.notes: list[str] = []

    def describe(self) -> str:
        text, _ = describe_layout(
            len(self.dataset.urls), self.world_size, self.num_workers, self.dataset.shard_samples
        )
        return f"ShardStream rank {self.rank}: batches of {self.batch_size}; {text}\n{self.dataset.report()}"

    def epoch_report(self) -> str:
        """One line on the last finished epoch of this rank: batches, samples drop_last left out, samples skipped."""
        if self.last_epoch is None:
            return f"rank {self.rank}: no epoch finished yet"
        e = self.last_epoch
        return (
            f"epoch {e['epoch']} on rank {self.rank}: {e['batches']} batches of {self.batch_size}, {e['dropped']} "
            f"samples left in partial buckets (drop_last), {self.dataset.skipped} skipped by the dataset so far"
        )

    def _slots(self, epoch: int) -> list[Slot]:
        slots = epoch_slots(len(self.dataset.urls), self.world_size * self.readers, self.seed, epoch,
                            self.dataset.shuffle_shards)  # fmt: skip
        return slots[self.rank * self.readers : (self.rank + 1) * self.readers]

    def _messages(self) -> Iterator[dict]:
        source = EpochSource(self.dataset, self._slots(self.epoch), list(self._states), self._next, self.batch_size,
                             self.seed, self.epoch)  # fmt: skip
        if self.num_workers == 0:
            return iter(source)
        # its own generator: a DataLoader without one draws its workers' base seed from the global torch RNG, which
        # would shift the trainer's random stream at every epoch (and differently after a resume)
        loader = DataLoader(source, batch_size=None, num_workers=self.num_workers, collate_fn=_identity,
                            pin_memory=torch.cuda.is_available(), worker_init_fn=worker_init,
                            generator=torch.Generator().manual_seed(self.seed + self.epoch))  # fmt: skip
        return iter(loader)

    def _epoch(self) -> Iterator[dict]:
        base = self.rank * self.readers
        active = [i for i in range(self.readers) if not (self._states[i] or {}).get("done")]
        queues: dict[int, deque] = {i: deque() for i in range(self.readers)}
        messages = self._messages()
        current = self._next if self._next in active else _after(active, self._next)
        while active:
            while not queues[current]:  # normally the next message is already the current reader's
                message = next(messages, None)
                if message is None:
                    raise RuntimeError(f"reader {current} of rank {self.rank} stopped before the end of its epoch")
                queues[message["slot"] - base].append(message)
            message = queues[current].popleft()
            self._states[current] = message["state"]
            self.dataset.note_skipped(message["skipped"])
            if message["kind"] == "end":
                active.remove(current)
            current = self._next = _after(active, current)
            if message["kind"] == "batch":
                self.batch_in_epoch += 1
                yield message["batch"]

    def _check_ranks_agree(self) -> None:
        """Under torch.distributed, every rank must split the same shard list with the same seed (a seed + rank, as
        map-style samplers get, would give each rank another shard order: samples seen twice or never)."""
        if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
            return
        actual = (torch.distributed.get_rank(), torch.distributed.get_world_size())
        if actual != (self.rank, self.world_size):
            raise ValueError(f"ShardStream built for rank {self.rank} of {self.world_size}, but this is {actual}")
        if self.world_size > 1:
            mine = (self.seed, self._layout()["shards"])
            every: list = [None] * self.world_size
            torch.distributed.all_gather_object(every, mine)
            if any(other != mine for other in every):
                seeds = [other[0] for other in every]
                raise ValueError(
                    f"the ranks' shard streams differ (seeds {seeds}, or the shard lists): every rank must pass the "
                    "same seed (train.seed, not seed + rank) and the same data.urls"
                )

    def __iter__(self) -> Iterator[dict]:
        self._check_ranks_agree()  # a collective under torch.distributed: every rank starts iterating
        empty_epochs = 0
        while True:
            if self.on_epoch is not None:
                self.on_epoch(self.epoch)
            produced = False
            for batch in self._epoch():
                produced = True
                yield batch
            dropped = sum(state["dropped"] for state in self._states if state)
            self.last_epoch = {"epoch": self.epoch, "batches": self.batch_in_epoch, "dropped": dropped}
            self.dropped += dropped
            empty_epochs = 0 if produced else empty_epochs + 1
            if empty_epochs > 1:
                raise RuntimeError(
                    f"rank {self.rank} got no batch of {self.batch_size} in two epochs: {self.describe()}"
                )
            self.epoch, self.batch_in_epoch, self._next = self.epoch + 1, 0, 0
            self._states = [None] * self.readers

    # ---- position -------------------------------------------------------------------------------------------------

    def _layout(self) -> dict:
        return {
            "world_size": self.world_size,
            "readers": self.readers,
            "seed": self.seed,
            "shards": [url.rsplit("/", 1)[-1] for url in self.dataset.urls],
        }

    def local_state_dict(self) -> dict:
        """This rank's position only (what :meth:`state_dict` gathers)."""
        ranks: list[dict | None] = [None] * self.world_size
        ranks[self.rank] = {
            "epoch": self.epoch,
            "batch_in_epoch": self.batch_in_epoch,
            "next": self._next,
            "readers": [dict(s) if s else None for s in self._states],
            "batch_size": self.batch_size,
        }
        return {"kind": "shards", "version": STATE_VERSION, **self._layout(), "epoch": self.epoch,
                "batch_in_epoch": self.batch_in_epoch, "ranks": ranks}  # fmt: skip

    def state_dict(self) -> dict:
        """Every rank's position: a collective (``all_gather_object``) when torch.distributed is initialized with
        more than one rank, so every rank must call it; plain ints, strings and lists (``weights_only``-loadable)."""
        state = self.local_state_dict()
        if self.world_size > 1 and torch.distributed.is_available() and torch.distributed.is_initialized():
            gathered: list = [None] * self.world_size
            torch.distributed.all_gather_object(gathered, state["ranks"][self.rank])
            state["ranks"] = gathered
        return state

    @staticmethod
    def merge_states(states: list[dict]) -> dict:
        """One state from the :meth:`local_state_dict` of every rank (without a process group)."""
        merged = dict(states[0], ranks=list(states[0]["ranks"]))
        for state in states[1:]:
            for rank, position in enumerate(state["ranks"]):
                if position is not None:
                    merged["ranks"][rank] = position
        return merged

    def load_state_dict(self, state: dict) -> None:
        """Continue from ``state`` (:meth:`state_dict`). A position saved with another number of ranks, readers per
        rank, seed or shard list is refused with what to do, or with ``data.on_layout_change='next_epoch'`` the
        stream starts the epoch after the saved one (noted in :attr:`notes`)."""
        if state.get("kind") != "shards":
            raise ValueError("the checkpoint's data position is not a shard stream's (another dataset type)")
        if state.get("version") != STATE_VERSION:
            raise ValueError(f"shard stream position version {state.get('version')}, expected {STATE_VERSION}")
        saved, now = {k: state.get(k) for k in self._layout()}, self._layout()
        differ = [k for k in now if saved[k] != now[k]]
        if differ:
            what = ", ".join(_difference(k, saved[k], now[k]) for k in differ)
            epoch = 1 + max(r["epoch"] for r in state["ranks"] if r is not None)
            if self.dataset.on_layout_change != "next_epoch":
                raise ValueError(
                    f"the data position was saved with another layout ({what}; 'readers' = max(1, "
                    "train.num_workers) per rank): an exact resume needs the same number of ranks, train.num_workers, "
                    "train.seed and shard list. Resume with those, or set data.on_layout_change='next_epoch' to "
                    f"start epoch {epoch} with this layout (the rest of the interrupted epoch is not seen)"
                )
            self.epoch, self.batch_in_epoch, self._next, self._states = epoch, 0, 0, [None] * self.readers
            self.notes.append(f"data position saved with another layout ({what}): starting epoch {epoch}")
            return
        mine = state["ranks"][self.rank]
        if mine is None:
            raise ValueError(f"the data position holds no position for rank {self.rank} (saved by a single rank?)")
        self.epoch, self.batch_in_epoch, self._next = mine["epoch"], mine["batch_in_epoch"], mine["next"]
        self._states = [dict(s) if s else None for s in mine["readers"]]
        if mine.get("batch_size", self.batch_size) != self.batch_size:
            self.notes.append(
                f"batch size {mine['batch_size']} -> {self.batch_size}: the samples waiting in buckets form batches "
                "of the new size (the order of samples is kept)"
            )
