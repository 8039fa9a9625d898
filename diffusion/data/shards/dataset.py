"""Training from WebDataset tar shards (LAION-style data as img2dataset writes it, or ``tools/make_shards.py``).

``ShardDataset`` is what ``data=dict(type="ShardDataset", ...)`` builds: the shard list, how samples become items and
the run's report of skipped samples and shards. It does not index samples (a shard set is read, not addressed); the
trainer iterates :meth:`ShardDataset.stream` (stream.py), which splits every epoch over ranks and loader workers
(layout.py), reads, shuffles, buckets and decodes (reader.py) and remembers its exact position.
"""

import json
from pathlib import Path

from webdataset.shardlists import expand_urls

from diffusion.data.buckets import aspect_ratio_table
from diffusion.data.shards.samples import ReadSpec
from diffusion.data.shards.stream import ShardStream
from diffusion.data.shards.writer import MANIFEST, read_manifest
from diffusion.registry import DATASETS

LAYOUT_CHANGES = ("refuse", "next_epoch")
REPORT_LIMIT = 1000  # distinct skipped samples remembered by name (all are counted)


def expand_shard_urls(urls: str | list[str] | tuple[str, ...]) -> list[str]:
    """``'DIR/{00000..00099}.tar'`` (brace pattern, ``::``-separated patterns) or a list of paths / URLs (each may hold
    braces) → the shard list, in order."""
    if isinstance(urls, str):
        return expand_urls(urls)
    if isinstance(urls, list | tuple) and all(isinstance(u, str) for u in urls):
        return [url for pattern in urls for url in expand_urls(pattern)]
    raise ValueError(f"data.urls must be a brace pattern or a list of paths / URLs, got {urls!r}")


def _is_local(url: str) -> bool:
    return "://" not in url and not url.startswith("pipe:")


def _img2dataset_counts(urls: list[str]) -> list[int] | None:
    """Samples per shard from the ``<shard>_stats.json`` files img2dataset writes beside local shards (its
    ``successes``), when every shard has one."""
    counts = []
    for url in urls:
        stats = Path(url).with_name(Path(url).stem + "_stats.json") if _is_local(url) else None
        try:
            counts.append(int(json.loads(stats.read_text())["successes"]))
        except (AttributeError, OSError, ValueError, KeyError, TypeError):
            return None
    return counts


@DATASETS.register_module()
class ShardDataset:
    """Images, captions (and control images) from tar shards, for the trainer's on-the-fly encoding path.

    Args:
        urls: shard brace pattern (``DIR/{00000..00099}.tar``) or list of paths / URLs (``pipe:``, ``http(s)://``
            and the other schemes of ``webdataset.gopen``).
        resolution: training resolution R; images are resized to cover their bucket and centre-cropped.
        multi_scale: aspect-ratio buckets of R (buckets.py) from each sample's json height/width; else R x R.
        load_control: items need a ``{key}.control.<ext>`` image (ControlNet); a sample without one is skipped.
        shuffle_buffer: samples in each reader's shuffle buffer (0 or 1: read order); shard order is always shuffled
            per epoch unless ``shuffle_shards`` is False.
        manifest: a ``manifest.json`` giving samples per shard (reports only); default: ``manifest.json`` beside
            local shards when there is one, else img2dataset's ``<shard>_stats.json`` files.
        on_layout_change: resuming a position saved with another number of ranks / workers, seed or shard list:
            ``'refuse'`` (an error saying what to do) or ``'next_epoch'`` (start the next epoch).
    """

    yields = "images"  # images and captions: the trainer encodes them in the step (diffusion/engine/data_source.py)

    def __init__(
        self,
        urls: str | list[str],
        resolution: int,
        multi_scale: bool = False,
        load_control: bool = False,
        shuffle_buffer: int = 1000,
        shuffle_shards: bool = True,
        manifest: str | None = None,
        on_layout_change: str = "refuse",
    ) -> None:
        self.urls = expand_shard_urls(urls)
        if not self.urls:
            raise ValueError(f"data.urls {urls!r} names no shard")
        if not isinstance(resolution, int) or resolution < 1:
            raise ValueError(f"data.resolution must be a positive int, got {resolution!r}")
        if multi_scale:
            aspect_ratio_table(resolution)  # a resolution the bucket table does not scale to is an error here
        if on_layout_change not in LAYOUT_CHANGES:
            raise ValueError(f"data.on_layout_change = {on_layout_change!r} is not one of {LAYOUT_CHANGES}")
        if not isinstance(shuffle_buffer, int) or shuffle_buffer < 0:
            raise ValueError(f"data.shuffle_buffer must be an int >= 0, got {shuffle_buffer!r}")
        self.spec = ReadSpec(resolution, multi_scale, load_control)
        self.shuffle_buffer, self.shuffle_shards, self.on_layout_change = (
            shuffle_buffer,
            shuffle_shards,
            on_layout_change,
        )
        self.skipped_items: list[tuple[str, str, str]] = []  # (shard, key, reason); key '*': the whole shard
        self._seen: set[tuple[str, str]] = set()
        self.skipped, self.skipped_shards = 0, 0
        missing = [url for url in self.urls if _is_local(url) and not Path(url).is_file()]
        if len(missing) == len(self.urls):  # a typo or shards not made yet: not something to train two empty epochs on
            raise FileNotFoundError(
                f"none of the {len(self.urls)} shard(s) of data.urls {urls!r} exists (first: {missing[0]}); write "
                "them with tools/make_shards.py or fix the pattern"
            )
        self.shard_samples = self._counts(manifest)
        for url in missing:
            self.note_skipped([(url, "*", "missing shard (not a file)")])

    def _counts(self, manifest: str | None) -> list[int] | None:
        """Samples per shard from a manifest, when it lists every shard (an unreadable one found beside the shards
        is ignored: the counts only feed reports; one named by ``data.manifest`` is an error)."""
        if manifest is None:
            folders = {str(Path(url).parent) for url in self.urls if _is_local(url)}
            if len(folders) != 1 or not (Path(folders.pop()) / MANIFEST).is_file():
                return _img2dataset_counts(self.urls)
            try:
                shards = read_manifest(Path(self.urls[0]).parent / MANIFEST)["shards"]
            except ValueError:
                return None
        else:
            shards = read_manifest(manifest)["shards"]
        counts = {entry.get("name"): entry.get("samples") for entry in shards if isinstance(entry, dict)}
        names = [url.rsplit("/", 1)[-1] for url in self.urls]
        return [counts[name] for name in names] if all(isinstance(counts.get(n), int) for n in names) else None

    @property
    def num_samples(self) -> int | None:
        """Samples per epoch from the manifest (None when unknown)."""
        return sum(self.shard_samples) if self.shard_samples is not None else None

    def stream(
        self, batch_size: int, rank: int = 0, world_size: int = 1, num_workers: int = 0, seed: int = 0
    ) -> ShardStream:
        """The endless, resumable batch stream of one rank (see :class:`ShardStream`)."""
        return ShardStream(self, batch_size, rank, world_size, num_workers, seed)

    def note_skipped(self, skipped) -> None:
        """Record (shard, key, reason) triples of skipped samples / shards (from the readers' messages); the same
        (shard, key) again, next epoch, is not counted twice."""
        for url, key, reason in skipped:
            if (url, key) in self._seen:
                continue
            self._seen.add((url, key))
            self.skipped += 1
            self.skipped_shards += key == "*"
            if len(self.skipped_items) < REPORT_LIMIT:
                self.skipped_items.append((url, key, reason))

    def report(self) -> str:
        """One line of counts plus up to five skipped samples or shards by name."""
        size = f"{self.num_samples} samples (manifest)" if self.num_samples is not None else "samples not counted"
        mode = "multi-scale" if self.spec.multi_scale else "square"
        text = (
            f"ShardDataset({self.urls[0]}{' ...' if len(self.urls) > 1 else ''}, {len(self.urls)} shard(s), {size}, "
            f"res {self.spec.resolution} {mode}): {self.skipped} skipped so far ({self.skipped_shards} whole shard(s))"
        )
        for url, key, reason in self.skipped_items[:5]:
            text += f"\n  skipped {url}" + (f" {key}" if key != "*" else "") + f": {reason}"
        return text
