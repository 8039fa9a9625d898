"""One slot's epoch (one loader worker of one rank, see layout.py): shards → checked samples → shuffle buffer →
aspect-ratio buckets → batches, with a position that resumes it exactly.

The tar files are opened and split into samples by ``webdataset`` (``tarfile_samples``: ``gopen`` for paths, URLs
and ``pipe:``; members grouped by key). What follows is deterministic per (seed, epoch, slot):

1. each sample is checked (samples.parse) and appended to a shuffle buffer; once the buffer holds ``buffer_size``
   samples, a seeded draw (layout.Draws) takes one out (swap with the last, pop); the rest drain at the end;
2. a sample leaving the buffer joins its bucket; a bucket holding ``batch_size`` samples decodes them (a bad image is
   skipped, named and replaced by later samples of the bucket) and emits the batch; partial buckets at the end of
   the epoch are dropped and counted.

The position after each batch (:meth:`SlotReader.state`) is small: the shard and sample index to read next, the
number of draws, and the (shard, sample) references of the samples waiting in the buffer and the buckets. Resuming
re-reads only the shards those references point into (the current one and, rarely, an older one) up to them, without
decoding, and goes on from the position: the same batches follow as in an uninterrupted epoch.
"""

from collections.abc import Iterator

from webdataset.tariterators import tarfile_samples

from diffusion.data.dataset import collate
from diffusion.data.shards.layout import Draws, Slot
from diffusion.data.shards.samples import ReadSpec, Sample, decode, parse


def message(slot: int, kind: str, state: dict, skipped: list, batch: dict | None = None) -> dict:
    """What a reader sends the main process: a ``batch`` (collated) or its ``end``; with the reader's ``state`` after
    it (at the end its ``dropped``: samples left in partial buckets) and the samples ``skipped`` since its last
    message ((shard, key, reason)). A plain dict, so that the DataLoader pins the batch's tensors."""
    return {"slot": slot, "kind": kind, "batch": batch, "state": state, "skipped": skipped}


def _flat(refs: list[tuple[int, int]]) -> list[int]:
    return [n for ref in refs for n in ref]


def _pairs(flat: list[int]) -> list[tuple[int, int]]:
    return [(flat[i], flat[i + 1]) for i in range(0, len(flat), 2)]


class SlotReader:
    """Iterates one slot's epoch as :func:`message` dicts, from its start or from a :meth:`state`.

    Args:
        urls: the whole shard list (the slot reads ``urls[i] for i in slot.shards``).
        slot: the epoch's layout for this reader.
        spec: resolution / buckets / control.
        batch_size: samples per batch.
        buffer_size: shuffle buffer size (<= 1: no shuffling of samples).
        seed, epoch: key of the draws.
        state: a position from :meth:`state` of the same (urls, slot, seed, epoch).
    """

    def __init__(
        self,
        urls: list[str],
        slot: Slot,
        spec: ReadSpec,
        batch_size: int,
        buffer_size: int,
        seed: int,
        epoch: int,
        state: dict | None = None,
    ) -> None:
        self.urls = [urls[i] for i in slot.shards]
        self.slot, self.spec, self.batch_size, self.buffer_size = slot, spec, batch_size, buffer_size
        state = state or {}
        self.shard, self.member = state.get("shard", 0), state.get("member", 0)
        self.draws = Draws(seed, epoch, slot.index, count=state.get("draws", 0))
        self.batches, self.samples = state.get("batches", 0), state.get("samples", 0)
        self.skipped_count, self.dropped = state.get("skipped", 0), state.get("dropped", 0)
        self._saved = state
        self.buffer: list[Sample] = []
        self.pending: dict[str, list[Sample]] = {}
        self.skipped: list[tuple[str, str, str]] = []

    def state(self, done: bool = False) -> dict:
        """The position after the last message (plain ints, lists and strings: checkpoint-safe)."""
        return {
            "shard": self.shard,
            "member": self.member,
            "draws": self.draws.count,
            "buffer": _flat([s.ref for s in self.buffer]),
            "pending": {b: _flat([s.ref for s in group]) for b, group in self.pending.items() if group},
            "batches": self.batches,
            "samples": self.samples,
            "skipped": self.skipped_count,
            "dropped": self.dropped,
            "done": done,
        }

    def _skip(self, url: str, key: str, reason: str) -> None:
        self.skipped.append((url, key, reason))
        self.skipped_count += 1

    def _raw(self, index: int, start: int = 0) -> Iterator[tuple[int, dict]]:
        """(sample index in the shard, webdataset sample) of shard ``index`` from ``start``; a shard that is missing
        or breaks off is reported (its samples read so far stand)."""
        url, errors = self.urls[index], []

        def stop(error: Exception) -> bool:  # webdataset's handler: False ends the shard
            errors.append(error)
            return False

        count = 0
        for count, raw in enumerate(tarfile_samples([{"url": url}], handler=stop), start=1):
            if count > start:
                yield count - 1, raw
        if errors:
            error = errors[0]
            what = "missing or unreadable shard" if count == 0 else f"shard breaks off after {count} sample(s)"
            self._skip(url, "*", f"{what}: {type(error).__name__}: {error.args[0] if error.args else error}")

    def _check(self, raw: dict, ref: tuple[int, int]) -> Sample | None:
        try:
            return parse(raw, ref, self.spec)
        except ValueError as error:
            self._skip(raw.get("__url__", self.urls[ref[0]]), raw.get("__key__", "?"), str(error))
            return None

    def _restore(self) -> None:
        """Re-read the samples the saved buffer and buckets referred to (no decoding)."""
        buffer, pending = _pairs(self._saved.get("buffer", [])), self._saved.get("pending", {})
        wanted = set(buffer) | {ref for flat in pending.values() for ref in _pairs(flat)}
        found: dict[tuple[int, int], Sample] = {}
        for index in sorted({shard for shard, _ in wanted}):
            last = max(member for shard, member in wanted if shard == index)
            for member, raw in self._raw(index):
                if (index, member) in wanted:
                    found[(index, member)] = self._check(raw, (index, member))
                if member >= last:
                    break
        lost = [ref for ref in wanted if found.get(ref) is None]
        if lost:  # a shard changed or vanished since the checkpoint: resume without those samples, and say so
            self._skip(self.urls[lost[0][0]], "*", f"{len(lost)} buffered sample(s) not found again on resume")
        self.buffer = [found[ref] for ref in buffer if found.get(ref) is not None]
        for bucket, flat in pending.items():
            self.pending[bucket] = [found[ref] for ref in _pairs(flat) if found.get(ref) is not None]

    def _message(self, kind: str, batch: dict | None = None) -> dict:
        skipped, self.skipped = self.skipped, []
        return message(self.slot.index, kind, self.state(done=kind == "end"), skipped, batch)

    def _to_bucket(self, sample: Sample) -> Iterator[dict]:
        """Add ``sample`` to its bucket; a full bucket is decoded and emitted, its bad samples dropped (the bucket then
        waits for later samples)."""
        group = self.pending.setdefault(sample.bucket, [])
        group.append(sample)
        while len(group) >= self.batch_size:
            bad = [s for s in group[: self.batch_size] if not self._decodes(s)]
            if bad:
                group[:] = [s for s in group if s not in bad]
                continue
            items = [s.item for s in group[: self.batch_size]]
            del group[: self.batch_size]
            self.batches, self.samples = self.batches + 1, self.samples + len(items)
            yield self._message("batch", collate(items))

    def _decodes(self, sample: Sample) -> bool:
        try:
            decode(sample, self.spec)
            return True
        except Exception as error:  # bad image bytes, truncated file, a size that disagrees with the json
            self._skip(sample.url, sample.key, f"{type(error).__name__}: {error}")
            return False

    def _take(self) -> Sample:
        """A seeded draw out of the shuffle buffer (swap with the last, pop)."""
        i = self.draws.below(len(self.buffer)) if self.buffer_size > 1 else len(self.buffer) - 1
        self.buffer[i], self.buffer[-1] = self.buffer[-1], self.buffer[i]
        return self.buffer.pop()

    def __iter__(self) -> Iterator[dict]:
        if self._saved.get("done"):
            return
        self._restore()
        for index in range(self.shard, len(self.urls)):
            start = self.member if index == self.shard else 0
            for member, raw in self._raw(index, start):
                self.shard, self.member = index, member + 1
                sample = self._check(raw, (index, member)) if member % self.slot.parts == self.slot.part else None
                if sample is not None:
                    self.buffer.append(sample)
                    if len(self.buffer) >= max(1, self.buffer_size):
                        yield from self._to_bucket(self._take())
            self.shard, self.member = index + 1, 0
        while self.buffer:  # drain
            yield from self._to_bucket(self._take())
        self.dropped = sum(len(group) for group in self.pending.values())  # drop_last
        self.pending = {}
        yield self._message("end")
