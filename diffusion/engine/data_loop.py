"""Endless, resumable stream of training batches over epochs.

Each epoch's order is a pure function of ``seed + epoch`` (``DistributedSampler.set_epoch`` or the bucket sampler's
``set_epoch``), so a resumed run re-creates the epoch and skips the batches it had already consumed. The user hears
about the data: :func:`describe_data` (size, the dataset's own ``report()``) at the start and :func:`epoch_report`
(batches, items ``drop_last`` dropped, items skipped so far) at every epoch, through ``BatchStream.on_epoch``.
"""

from collections.abc import Callable, Iterator, Sequence, Sized

import torch
from torch.utils.data import BatchSampler, DataLoader, Dataset, DistributedSampler

from diffusion.data.workers import worker_init
from diffusion.protocols import Collates, Describes, EpochAware, NotesSkips, ReportsSkips


def to_device(batch, device: torch.device):
    """Move every tensor of a (nested) dict/list batch to ``device``; other values pass through."""
    if isinstance(batch, torch.Tensor):
        return batch.to(device, non_blocking=True)
    if isinstance(batch, dict):
        return {k: to_device(v, device) for k, v in batch.items()}
    if isinstance(batch, list | tuple):
        return type(batch)(to_device(v, device) for v in batch)
    return batch


class EpochBatchSampler:
    """``BatchSampler`` over a ``DistributedSampler`` (shuffled, drop_last) with ``set_epoch``.

    Every rank yields the same number of equal-size batches, as DDP requires; ``dropped_per_epoch`` items of the
    dataset are left out of every epoch for it (the uneven tail across ranks and each rank's partial batch).
    """

    def __init__(self, dataset: Dataset, batch_size: int, num_replicas: int, rank: int, seed: int) -> None:
        self.sampler = DistributedSampler(
            dataset, num_replicas=num_replicas, rank=rank, shuffle=True, seed=seed, drop_last=True
        )
        self.batches = BatchSampler(self.sampler, batch_size, drop_last=True)
        self.dropped_per_epoch = len(dataset) - len(self.batches) * batch_size * num_replicas

    def set_epoch(self, epoch: int) -> None:
        self.sampler.set_epoch(epoch)

    @property
    def dropped(self) -> int:
        """Items of the dataset left out of every epoch (the uneven tail over ranks and the last partial batches)."""
        return len(self.sampler.dataset) - len(self.batches) * self.batches.batch_size * self.sampler.num_replicas

    def __iter__(self) -> Iterator[list[int]]:
        return iter(self.batches)

    def __len__(self) -> int:
        return len(self.batches)


class _Skip:
    """The batches of ``batch_sampler`` after the first ``skip``."""

    def __init__(self, batch_sampler, skip: int) -> None:
        self.batch_sampler, self.skip = batch_sampler, skip

    def __iter__(self) -> Iterator[Sequence[int]]:
        for i, batch in enumerate(self.batch_sampler):
            if i >= self.skip:
                yield batch

    def __len__(self) -> int:
        return max(0, len(self.batch_sampler) - self.skip)


class BatchStream:
    """Iterator of collated batches that remembers its position (``epoch``, ``batch_in_epoch``).

    Args:
        dataset: map-style dataset of contract items.
        batch_sampler: yields index lists; ``set_epoch(epoch)`` is called before each epoch when it exists.
        collate_fn: list of items -> batch.
        num_workers: DataLoader workers (re-created per epoch).
        seed: seeds the DataLoader's own generator, so loading never consumes the global torch RNG.
    """

    def __init__(self, dataset: Dataset, batch_sampler, collate_fn: Callable, num_workers: int, seed: int) -> None:
        self.dataset, self.batch_sampler, self.collate_fn = dataset, batch_sampler, collate_fn
        self.num_workers, self.seed = num_workers, seed
        self.epoch, self.batch_in_epoch = 0, 0
        self.on_epoch: Callable[[int], None] | None = None  # called with the epoch number as each epoch starts

    def state_dict(self) -> dict[str, int]:
        return {"epoch": self.epoch, "batch_in_epoch": self.batch_in_epoch}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.epoch, self.batch_in_epoch = state["epoch"], state["batch_in_epoch"]

    def _check_not_empty(self) -> None:
        size = len(self.dataset) if isinstance(self.dataset, Sized) else None
        report = self.dataset.report() if isinstance(self.dataset, ReportsSkips) else ""
        if size == 0:
            raise RuntimeError(f"the dataset is empty: {report or type(self.dataset).__name__}")
        if isinstance(self.batch_sampler, Sized) and len(self.batch_sampler) == 0:
            sampler = self.batch_sampler
            raise RuntimeError(
                f"the data sampler yields no batches: {size} item(s) do not fill one batch on every rank "
                f"({sampler.describe() if isinstance(sampler, Describes) else type(sampler).__name__}); "
                "lower train.batch_size or add data"
            )

    def _note_skipped(self, batch) -> None:
        """Items loaded in DataLoader workers carry their skipped files; record them in the main-process dataset."""
        if isinstance(batch, dict) and "skipped" in batch:
            skipped = batch.pop("skipped")
            if isinstance(self.dataset, NotesSkips):
                self.dataset.note_skipped(skipped)

    def __iter__(self) -> Iterator:
        self._check_not_empty()
        empty_epochs = 0
        while True:
            if isinstance(self.batch_sampler, EpochAware):
                self.batch_sampler.set_epoch(self.epoch)
            if self.on_epoch is not None:
                self.on_epoch(self.epoch)
            loader = DataLoader(
                self.dataset,
                batch_sampler=_Skip(self.batch_sampler, self.batch_in_epoch),
                collate_fn=self.collate_fn,
                num_workers=self.num_workers,
                pin_memory=torch.cuda.is_available(),
                generator=torch.Generator().manual_seed(self.seed + self.epoch),
                worker_init_fn=worker_init,  # a SIGTERM to the process group is the trainer's to handle
            )
            produced = False
            for batch in loader:
                produced = True
                self._note_skipped(batch)
                self.batch_in_epoch += 1
                yield batch
            empty_epochs = 0 if produced else empty_epochs + 1
            if empty_epochs > 1:
                raise RuntimeError(f"the data sampler yielded no batches in two epochs over {len(self.dataset)} items")
            self.epoch, self.batch_in_epoch = self.epoch + 1, 0


def build_stream(dataset: Dataset, sampler_cfg: dict | None, train_cfg: dict, rank: int, world: int) -> BatchStream:
    """The training batches of this rank: the config's ``data_sampler`` (e.g. the aspect-ratio buckets) when given,
    else :class:`EpochBatchSampler`; collated by the dataset's own ``collate`` when it has one (test stand-ins do),
    else the data package's contract one. ``train_cfg``: the resolved ``train`` section."""
    import diffusion.data
    from diffusion.registry import DATA_SAMPLERS

    batch_size, seed = train_cfg["batch_size"], train_cfg["seed"]
    if sampler_cfg:
        batch_sampler = DATA_SAMPLERS.build(
            dict(
                sampler_cfg,
                dataset_ratios=dataset.aspect_ratios,
                batch_size=batch_size,
                seed=seed,
                rank=rank,
                world_size=world,
            )
        )
    else:
        batch_sampler = EpochBatchSampler(dataset, batch_size, world, rank, seed)
    collate = dataset.collate if isinstance(dataset, Collates) else diffusion.data.collate
    return BatchStream(dataset, batch_sampler, collate, train_cfg["num_workers"], seed + rank)


# names under which a batch sampler may count the items it leaves out of an epoch (drop_last)
DROPPED_ATTRS = ("dropped", "num_dropped", "dropped_last", "dropped_items")


def dropped_items(batch_sampler, dataset_size: int, batch_size: int, world_size: int) -> int:
    """Items one epoch leaves out: the sampler's own count when it has one, else dataset size minus what its batches
    hold (an upper bound on full batches, so a sampler without ``drop_last`` gives 0)."""
    for name in DROPPED_ATTRS:
        value = getattr(batch_sampler, name, None)
        value = value() if callable(value) else value
        if isinstance(value, int | list | tuple | set):
            return value if isinstance(value, int) else len(value)
    return max(0, dataset_size - len(batch_sampler) * batch_size * world_size)


def describe_data(dataset, batch_sampler, batch_size: int, world_size: int) -> str:
    """Dataset size, batches per epoch and the dataset's own report (``report()``) when it has one."""
    text = (
        f"dataset {type(dataset).__name__}: {len(dataset)} items, {len(batch_sampler)} batches of {batch_size} per "
        f"rank per epoch on {world_size} rank(s), "
        f"{dropped_items(batch_sampler, len(dataset), batch_size, world_size)} items dropped per epoch (drop_last)"
    )
    return text + (f"\n{dataset.report()}" if isinstance(dataset, ReportsSkips) else "")


def epoch_report(stream: BatchStream, epoch: int, batch_size: int, world_size: int) -> str:
    """One line per epoch: batches, items dropped by ``drop_last`` and items the dataset skipped so far."""
    dataset, sampler = stream.dataset, stream.batch_sampler
    text = (
        f"epoch {epoch}: {len(sampler)} batches per rank, "
        f"{dropped_items(sampler, len(dataset), batch_size, world_size)} items dropped (drop_last)"
    )
    if isinstance(dataset, ReportsSkips):
        text += f", {dataset.skipped} items skipped by the dataset so far (this process)"
        if dataset.skipped > 0:
            text += f"\n{dataset.report()}"  # names the skipped files
    return text
