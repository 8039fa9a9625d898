"""What each cached feature was made from, so that an extraction rerun redoes the items whose source changed.

``meta.json`` (provenance.py) records a cache directory's producer; this records each item's source. Without it an
edited caption or a replaced image (same name) would keep its old feature: extraction skips existing files to resume.
Each cache directory holds one index per extraction rank, ``sources.rank<r>.json`` = ``{name: [source, written]}``:

- captions: the sha256 of the exact prompt string (clean_caption is in ``meta.json``);
- image and control latents: the source image's size and mtime_ns plus the declared (h, w) and the target size.

``written`` (ns since the epoch) orders records: a reader merges every rank's file and keeps each name's latest
record, so a rerun with another world size, whose rank r writes only its own file, never needs a lock. Features
without a record (caches from before this index) are trusted and counted as unverified.

Records are durable with each feature, so that a killed extraction (SIGKILL, SIGTERM, a node lost) leaves no
unverified item behind, whose later edits would be skipped silently: every record is appended to the rank's journal
``sources.rank<r>.journal`` (one JSON line, one ``write`` to the OS) right after its file is renamed into place, and
before a batch of files is written a ``[name, null, t]`` line marks each as in progress. A name whose latest record
is such a mark (killed between the mark and the record) counts as changed: redone, whatever its file holds. ``flush``
folds the journal into ``sources.rank<r>.json`` (atomically) and removes it. Not fsync'ed: a power loss may lose the
last records of the OS's write-back window, a killed process loses none.
The dataset compares caption records with data_info.json's prompts (a hash per item) when it is built.
"""

import hashlib
import json
import os
import time
from pathlib import Path

FLUSH_SECONDS = 30.0  # how often the journal is folded into the json index (the journal is durable meanwhile)


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


def _read_json(path: Path) -> dict[str, list]:
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise ValueError(f"{path} is not valid JSON ({error}); delete it (its items become unverified)") from error


def _read_journal(path: Path) -> list[list]:
    """The records of a journal in order; a torn last line (a write cut by a power loss) is ignored."""
    if not path.is_file():
        return []
    lines, records = path.read_text().splitlines(), []
    for number, line in enumerate(lines, start=1):
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError as error:
            if number < len(lines):
                raise ValueError(f"{path} line {number} is not valid JSON ({error}); delete it") from error
    return records


def _merge(merged: dict[str, list], name: str, record: list) -> None:
    if name not in merged or record[1] >= merged[name][1]:
        merged[name] = record


def read_sources(directory: str | Path) -> dict[str, list]:
    """Every rank's records in ``directory`` (json index and journal) merged, the latest per name ({} when there are
    none); ``[None, t]`` marks a feature whose writing was interrupted. A corrupt file is a ValueError naming it."""
    merged: dict[str, list] = {}
    directory = Path(directory)
    for path in sorted(directory.glob("sources.rank*.json")):
        for name, record in _read_json(path).items():
            _merge(merged, name, record)
    for path in sorted(directory.glob("sources.rank*.journal")):
        for name, source, written in _read_journal(path):
            _merge(merged, name, [source, written])
    return merged


class SourceIndex:
    """The records of one cache directory, as seen by extraction rank ``rank``: :attr:`recorded` (every rank's,
    merged) to compare with, :meth:`begin` before writing features, :meth:`record` after each one, :meth:`flush` to
    fold this rank's journal into its json file."""

    def __init__(self, directory: str | Path, rank: int = 0) -> None:
        self.path = Path(directory) / f"sources.rank{rank}.json"
        self.journal = self.path.with_suffix(".journal")
        self.recorded = read_sources(directory)
        self._own = _read_json(self.path) if self.path.is_file() else {}
        for name, source, written in _read_journal(self.journal):
            self._own[name] = [source, written]
        self._fd: int | None = None
        self._flushed = time.monotonic()

    def status(self, name: str, source: str | None) -> str:
        """``'unverified'`` (no record), ``'same'`` or ``'changed'`` (another source, or an interrupted write) for
        the existing feature ``name``."""
        record = self.recorded.get(name)
        if record is None:
            return "unverified"
        return "same" if record[0] is not None and record[0] == source else "changed"

    def _append(self, entries: list[tuple[str, str | None]]) -> None:
        """One ``write`` of one journal line per entry: what a kill after it returns cannot lose."""
        now = time.time_ns()
        for name, source in entries:
            self.recorded[name] = self._own[name] = [source, now]
        if self._fd is None:
            self._fd = os.open(self.journal, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        os.write(self._fd, "".join(json.dumps([n, s, now]) + "\n" for n, s in entries).encode())

    def begin(self, names: list[str]) -> None:
        """Mark ``names`` as being written: until :meth:`record`, their files count as changed (redone)."""
        if names:
            self._append([(name, None) for name in names])

    def record(self, name: str, source: str | None) -> None:
        """Note that the feature ``name`` was just written from ``source`` (None: its file is gone or invalid)."""
        self._append([(name, source)])
        if time.monotonic() - self._flushed > FLUSH_SECONDS:
            self.flush()

    def flush(self) -> None:
        """Fold this rank's journal into its json file (temporary file + rename), then remove the journal."""
        if self._fd is None and not self.journal.exists():
            return
        tmp = self.path.with_name(f"{self.path.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps(self._own, separators=(",", ":")))
        os.replace(tmp, self.path)
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
        self.journal.unlink(missing_ok=True)  # a kill before this line replays the journal over the same records
        self._flushed = time.monotonic()


def edited_captions(directory: str | Path, names: list[str], prompts: list[str]) -> list[str]:
    """The names among ``names`` whose recorded caption source differs from their prompt in ``prompts`` (or whose
    extraction was interrupted while their file was written)."""
    recorded = read_sources(directory)
    return [n for n, p in zip(names, prompts) if n in recorded and recorded[n][0] != prompt_source(p)]
