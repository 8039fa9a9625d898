"""What each cached feature was made from, so that an extraction rerun redoes the items whose source changed.

``meta.json`` (provenance.py) records a cache directory's producer; this records each item's source. Without it an
edited caption or a replaced image (same name) would keep its old feature: extraction skips existing files to resume.
Each cache directory holds one index per extraction rank, ``sources.rank<r>.json`` = ``{name: [source, written]}``:

- captions: the sha256 of the exact prompt string (clean_caption is in ``meta.json``);
- image and control latents: the source image's size and mtime_ns plus the declared (h, w) and the target size.

``written`` (ns since the epoch) orders records: a reader merges every rank's file and keeps each name's latest
record, so a rerun with another world size, whose rank r writes only its own file, never needs a lock. Features
without a record (caches from before this index, or written just before an interruption) are trusted and counted as
unverified. The dataset compares caption records with data_info.json's prompts (a hash per item) when it is built.
"""

import hashlib
import json
import os
import time
from pathlib import Path

FLUSH_SECONDS = 30.0  # an interrupted run loses at most this much of its records (those files become unverified)


def prompt_source(prompt: str) -> str:
    """The recorded source of a caption feature: the sha256 of the exact prompt string (16 hex digits)."""
    return hashlib.sha256(prompt.encode()).hexdigest()[:16]


def image_source(image: Path, declared: tuple[int, int] | None, size: tuple[int, int]) -> str | None:
    """The recorded source of a latent: ``image``'s size and mtime_ns, the declared and the target (h, w); None when
    the image cannot be stat'ed (extraction then reports it as bad)."""
    try:
        stat = image.stat()
    except OSError:
        return None
    return f"{stat.st_size}:{stat.st_mtime_ns}:{declared}:{size}"


def read_sources(directory: str | Path) -> dict[str, list]:
    """Every rank's records in ``directory`` merged, the latest per name ({} when there are none); a corrupt file is
    a ValueError naming it."""
    merged: dict[str, list] = {}
    for path in sorted(Path(directory).glob("sources.rank*.json")):
        try:
            records = json.loads(path.read_text())
        except json.JSONDecodeError as error:
            raise ValueError(f"{path} is not valid JSON ({error}); delete it (its items become unverified)") from error
        for name, record in records.items():
            if name not in merged or record[1] > merged[name][1]:
                merged[name] = record
    return merged


class SourceIndex:
    """The records of one cache directory, as seen by extraction rank ``rank``: :attr:`recorded` (every rank's,
    merged) to compare with, :meth:`record` to note a written feature, :meth:`flush` to write this rank's file."""

    def __init__(self, directory: str | Path, rank: int = 0) -> None:
        self.path = Path(directory) / f"sources.rank{rank}.json"
        self.recorded = read_sources(directory)
        self._own = json.loads(self.path.read_text()) if self.path.is_file() else {}
        self._dirty, self._flushed = False, time.monotonic()

    def status(self, name: str, source: str | None) -> str:
        """``'unverified'`` (no record), ``'same'`` or ``'changed'`` for the existing feature ``name``."""
        record = self.recorded.get(name)
        if record is None:
            return "unverified"
        return "same" if record[0] == source else "changed"

    def record(self, name: str, source: str | None) -> None:
        """Note that the feature ``name`` was just written from ``source`` (None: forget its record)."""
        if source is None:
            self._own.pop(name, None)
            self.recorded.pop(name, None)
        else:
            self.recorded[name] = self._own[name] = [source, time.time_ns()]
        self._dirty = True
        if time.monotonic() - self._flushed > FLUSH_SECONDS:
            self.flush()

    def flush(self) -> None:
        """Write this rank's records atomically (temporary file + rename) when they changed."""
        if not self._dirty:
            return
        tmp = self.path.with_name(f"{self.path.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps(self._own, separators=(",", ":")))
        os.replace(tmp, self.path)
        self._dirty, self._flushed = False, time.monotonic()


def edited_captions(directory: str | Path, names: list[str], prompts: list[str]) -> list[str]:
    """The names among ``names`` whose recorded caption source differs from their prompt in ``prompts``."""
    recorded = read_sources(directory)
    return [n for n, p in zip(names, prompts) if n in recorded and recorded[n][0] != prompt_source(p)]
