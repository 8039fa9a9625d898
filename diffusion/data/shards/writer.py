"""A data folder (``data_info.json`` + images) → WebDataset tar shards in the img2dataset layout, with a manifest.

Each usable item becomes the members ``{key}.<ext>`` (the image file's own bytes, EXIF and all, so the shard dataset
reads it exactly as extraction would), ``{key}.txt`` (the prompt, UTF-8), ``{key}.json`` (``key``, ``path``,
``height``, ``width`` as data_info.json declares them, ``control_path``) and ``{key}.control.<ext>`` when the item
has a ``control_path``. ``key`` is the item's index in data_info.json, 9 digits (img2dataset's style), so it stays
the same when other items turn bad. Items are checked first (the image and control image decode fully, the declared
size has the image's aspect ratio, a non-empty prompt); bad ones are skipped and listed in the manifest.

Output is deterministic (the same folder gives the same bytes: members in key order, mtime 0, fixed owner and mode)
and every shard is written to ``NNNNN.tar.tmp`` then renamed, so a killed run never leaves a partial shard under a
shard's name. ``manifest.partial.json`` records each finished shard with a hash of what went into it (keys, paths,
prompts, sizes, the files' size and mtime), so a rerun rewrites only shards whose items changed and ``manifest.json``
(samples, bytes and sha256 per shard) appears only once all are done.
"""

import hashlib
import json
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from tqdm import tqdm
from webdataset import TarWriter

from diffusion.data.images import load_pixels, oriented_size
from diffusion.data.info import load_data_info

MANIFEST, PARTIAL = "manifest.json", "manifest.partial.json"


@dataclass
class ShardReport:
    """What ``make_shards`` wrote: ``shards`` (name, samples, bytes, sha256 as in the manifest), ``reused`` shard
    names (unchanged since an earlier run), ``skipped`` (path, reason) of bad items."""

    shards: list[dict] = field(default_factory=list)
    reused: list[str] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)

    def summary(self) -> str:
        samples = sum(s["samples"] for s in self.shards)
        size = sum(s["bytes"] for s in self.shards)
        text = (
            f"{len(self.shards)} shard(s), {samples} samples, {size / 2**20:.1f} MiB "
            f"({len(self.reused)} unchanged shard(s) kept); {len(self.skipped)} item(s) skipped"
        )
        return text + "".join(f"\n  skipped: {path}: {reason}" for path, reason in self.skipped)


def _check(root: Path, entry: dict) -> str | None:
    """Why the item cannot be sharded (None when it can): a missing/undecodable image or control image, a declared
    size with another aspect ratio, an empty prompt."""
    if not isinstance(entry["prompt"], str) or not entry["prompt"].strip():
        return "empty prompt"
    try:
        declared = (int(entry["height"]), int(entry["width"]))
        load_pixels(root / entry["path"], oriented_size(root / entry["path"]), declared)  # decodes it fully
        if entry.get("control_path"):
            control = root / entry["control_path"]
            load_pixels(control, oriented_size(control))
    except Exception as error:  # unreadable, truncated, not an image, a wrong declared size
        return f"{type(error).__name__}: {error}"
    return None


def _members(root: Path, index: int, entry: dict) -> dict:
    """The tar members of one item (webdataset sample: ``__key__`` + suffix → bytes)."""
    key = f"{index:09d}"
    meta = {"key": key, "path": entry["path"], "height": int(entry["height"]), "width": int(entry["width"])}
    sample = {"__key__": key, "txt": entry["prompt"].encode("utf-8")}
    sample[Path(entry["path"]).suffix.lower().lstrip(".")] = (root / entry["path"]).read_bytes()
    if entry.get("control_path"):
        meta["control_path"] = entry["control_path"]
        sample["control." + Path(entry["control_path"]).suffix.lower().lstrip(".")] = (
            root / entry["control_path"]
        ).read_bytes()
    sample["json"] = json.dumps(meta, sort_keys=True).encode("utf-8")
    return sample


def _plan_hash(root: Path, items: list[tuple[int, dict]]) -> str:
    """What a shard is made of: keys, entries and the files' size + mtime (a replaced image changes it)."""
    digest = hashlib.sha256()
    for index, entry in items:
        files = [root / entry["path"]] + ([root / entry["control_path"]] if entry.get("control_path") else [])
        stats = [(f.stat().st_size, f.stat().st_mtime_ns) for f in files]
        digest.update(json.dumps([index, entry, stats], sort_keys=True, default=str).encode())
    return digest.hexdigest()


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _write_json(path: Path, data) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=1))
    os.replace(tmp, path)


def _write_shard(root: Path, items: list[tuple[int, dict]], path: Path) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        writer = TarWriter(f, encoder=False, mtime=0, user="pixart", group="pixart", mode=0o444)
        for index, entry in items:
            writer.write(_members(root, index, entry))
        writer.close()
    os.replace(tmp, path)


def read_manifest(path: str | Path) -> dict:
    """A shard folder's ``manifest.json`` (or the file itself); a ValueError naming it when it is not one."""
    path = Path(path)
    path = path / MANIFEST if path.is_dir() else path
    try:
        manifest = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as error:
        raise ValueError(f"{path}: not a readable shard manifest ({error})") from error
    if not isinstance(manifest, dict) or not isinstance(manifest.get("shards"), list):
        raise ValueError(f"{path}: not a shard manifest (no 'shards' list)")
    return manifest


def make_shards(
    source: str | Path,
    out: str | Path,
    per_shard: int = 1000,
    json_name: str = "data_info.json",
    workers: int = 4,
    progress: bool = True,
) -> ShardReport:
    """Shard ``source``'s items into ``out/00000.tar, ...`` (``per_shard`` samples each) and write the manifest."""
    if per_shard < 1:
        raise ValueError(f"per_shard must be at least 1, got {per_shard}")
    root, out = Path(source), Path(out)
    entries = load_data_info(root / json_name)
    out.mkdir(parents=True, exist_ok=True)
    report = ShardReport()
    with ThreadPoolExecutor(max(1, workers)) as pool:  # decoding releases the GIL
        reasons = list(tqdm(pool.map(lambda e: _check(root, e), entries), total=len(entries), desc="checking",
                            disable=not progress))  # fmt: skip
    good = []
    for index, (entry, reason) in enumerate(zip(entries, reasons)):
        if reason is None:
            good.append((index, entry))
        else:
            report.skipped.append((entry["path"], reason))
    if not good:
        raise ValueError(f"no usable items in {root / json_name}:\n{report.summary()}")
    for stale in out.glob("*.tar.tmp"):  # a shard a killed run was writing
        stale.unlink()
    previous = {}
    for name in (MANIFEST, PARTIAL):  # the partial one is the newer
        if (out / name).is_file():
            previous |= {s["name"]: s for s in read_manifest(out / name)["shards"]}
    groups = [good[i : i + per_shard] for i in range(0, len(good), per_shard)]
    manifest = {
        "format": "webdataset tar shards, img2dataset layout: {key}.<image ext>, {key}.txt, {key}.json"
        " [, {key}.control.<ext>]",
        "source": str(source),
        "json": json_name,
        "per_shard": per_shard,
        "shards": [],
    }
    for number, items in enumerate(tqdm(groups, desc="shards", disable=not progress)):
        name, plan = f"{number:05d}.tar", _plan_hash(root, items)
        old = previous.get(name)
        if old and old.get("plan") == plan and (out / name).is_file() and (out / name).stat().st_size == old["bytes"]:
            report.reused.append(name)
            entry = old
        else:
            _write_shard(root, items, out / name)
            entry = {"name": name, "samples": len(items), "bytes": (out / name).stat().st_size}
            entry |= {"sha256": _sha256(out / name), "plan": plan}
        manifest["shards"].append(entry)
        _write_json(out / PARTIAL, manifest)
    for name in sorted(set(previous) - {s["name"] for s in manifest["shards"]}):
        (out / name).unlink(missing_ok=True)  # a shard of an earlier, longer run (ours: named in its manifest)
    manifest |= {
        "samples": sum(s["samples"] for s in manifest["shards"]),
        "urls": f"{{00000..{len(groups) - 1:05d}}}.tar",
        "skipped": [list(pair) for pair in report.skipped],
    }
    _write_json(out / MANIFEST, manifest)
    (out / PARTIAL).unlink(missing_ok=True)
    report.shards = manifest["shards"]
    return report
