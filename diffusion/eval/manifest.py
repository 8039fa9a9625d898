"""What made a sample folder (PixArt-δ §5's FID / CLIP / attribute rows compare folders sampled with given settings):
``manifest.json`` records the config, checkpoint, sampler, seed, batch size, resolution, dtype and prompt list.

A resumed run must add images made the same way, or a folder would silently mix settings (and its ``prompts.txt``
would name prompts its old images were not drawn from). So ``sample`` resumes a folder only when its manifest equals
the new one, refuses a different one naming every differing key, and refuses a folder that has images but no manifest
(made before manifests existed: what made them is unknown). ``--overwrite`` clears the images and starts over.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

MANIFEST_FILE = "manifest.json"
PROMPTS_FILE = "prompts.txt"


def prompts_sha256(prompts: Sequence[str]) -> str:
    """sha256 of the prompts as ``prompts.txt`` stores them (one per line)."""
    return hashlib.sha256("".join(p + "\n" for p in prompts).encode("utf-8")).hexdigest()


def config_sha256(cfg: Mapping) -> str:
    """sha256 of the resolved config (``_base_`` files merged), so an edit to any base file counts."""
    text = json.dumps(dict(cfg), sort_keys=True, default=str)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def file_identity(path: str | Path | None) -> dict[str, Any] | None:
    """Absolute path, total size and latest mtime of a checkpoint file or folder (None: no checkpoint).

    Size + mtime rather than a hash: a 2.4 GB checkpoint would otherwise be read once more per run."""
    if path is None:
        return None
    path = Path(path).resolve()
    files = [p for p in path.rglob("*") if p.is_file()] if path.is_dir() else [path]
    if not files or not all(p.exists() for p in files):
        raise FileNotFoundError(f"checkpoint not found: {path}")
    stats = [p.stat() for p in files]
    return {"path": str(path), "bytes": sum(s.st_size for s in stats), "mtime_ns": max(s.st_mtime_ns for s in stats)}


def differing_keys(old: Mapping, new: Mapping) -> list[str]:
    """The top-level keys whose values differ (missing on one side counts), sorted."""
    return sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))


def read_manifest(folder: str | Path) -> dict | None:
    """``folder/manifest.json`` as a dict, or None when there is none."""
    path = Path(folder) / MANIFEST_FILE
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as error:
        raise ValueError(f"{path} is not valid JSON ({error}); rerun with --overwrite to start over") from error


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def check_folder(out: str | Path, manifest: Mapping, overwrite: bool = False) -> None:
    """Raise ``ValueError`` unless sampling with ``manifest`` may add to ``out`` (read-only: every rank calls it).

    Fine: a missing or empty folder, one with the same manifest (resume), or anything with ``overwrite``."""
    out = Path(out)
    if overwrite or not out.is_dir():
        return
    old = read_manifest(out)
    if old is None:
        if any(out.glob("*.png")):
            raise ValueError(
                f"{out} has images but no {MANIFEST_FILE} (made before sample folders had one, or by hand): what "
                "made them is unknown, so new images cannot be added to them; use another --out, or --overwrite to "
                "delete its PNGs and start over"
            )
        return
    keys = differing_keys(old, manifest)
    if keys:
        changes = "; ".join(f"{k}: {old.get(k)!r} -> {manifest.get(k)!r}" for k in keys)
        raise ValueError(
            f"{out} was made with other settings (its {MANIFEST_FILE} differs in {', '.join(keys)}: {changes}); "
            "use another --out, or --overwrite to delete its PNGs and start over"
        )


def prepare_folder(out: str | Path, manifest: Mapping, prompts: Sequence[str], overwrite: bool = False) -> None:
    """On rank 0 after :func:`check_folder`: with ``overwrite`` delete the folder's PNGs, then write ``manifest.json``
    and ``prompts.txt`` before the first image."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    if overwrite:
        for path in out.glob("*.png"):
            path.unlink()
    _write_atomic(out / MANIFEST_FILE, json.dumps(manifest, indent=1, sort_keys=True) + "\n")
    _write_atomic(out / PROMPTS_FILE, "".join(p + "\n" for p in prompts))


def check_sample_folder(folder: str | Path, prompts: Sequence[str] | None, num_images: int) -> None:
    """A folder with a manifest, before a metric reads it: ``prompts`` (its ``prompts.txt``, None: not read) must be
    the manifest's, and the folder must hold one image per manifest prompt. Folders without one are not checked."""
    manifest = read_manifest(folder)
    if manifest is None:
        return
    if prompts is not None and prompts_sha256(prompts) != manifest.get("prompts_sha256"):
        raise ValueError(
            f"{Path(folder) / PROMPTS_FILE} does not match the prompts its {MANIFEST_FILE} was sampled from "
            "(edited or replaced after sampling)"
        )
    if num_images != manifest.get("num_prompts"):
        raise ValueError(
            f"{folder} has {num_images} images but its {MANIFEST_FILE} lists {manifest.get('num_prompts')} prompts "
            "(sampling unfinished? rerun the same sample command to resume)"
        )
