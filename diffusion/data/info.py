"""data_info.json: the item list of a data folder (official format, facts §6) and the feature name of each item.

An item is ``{"path": relative image path, "prompt": caption, "height": h, "width": w, ...}`` with the size of the
image as displayed (after EXIF orientation). Its cache files are named :func:`feature_name` of its path.
"""

import json
import os
from pathlib import Path

REQUIRED_FIELDS = ("path", "prompt", "height", "width")


def feature_name(path: str) -> str:
    """``'images/00001.png'`` → ``'images_00001'`` (every '/' to '_', extension dropped; see features.py)."""
    return os.path.splitext(path.replace("/", "_"))[0]


def load_data_info(json_path: str | Path, required: tuple[str, ...] = REQUIRED_FIELDS) -> list[dict]:
    """Read a data_info.json list; a missing field is a ValueError naming the file, the item and the field."""
    json_path = Path(json_path)
    if not json_path.is_file():
        raise FileNotFoundError(
            f"no {json_path}; make the embedded default with diffusion.data.ensure_embedded_default(), or build it "
            "from a folder of images with tools/make_data_info.py, then run tools/extract_features.py"
        )
    try:
        entries = json.loads(json_path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as error:
        raise ValueError(f"{json_path} is not valid JSON: {error}") from error
    if not isinstance(entries, list):
        raise ValueError(f"{json_path}: expected a JSON list of items, got {type(entries).__name__}")
    for i, entry in enumerate(entries):
        if not isinstance(entry, dict):
            raise ValueError(f"{json_path}: item {i} is a {type(entry).__name__}, expected an object")
        missing = [key for key in required if key not in entry]
        if missing:
            raise ValueError(f"{json_path}: item {i} is missing field(s) {missing}")
    return entries


def check_unique_names(entries: list[dict], json_path: str | Path) -> None:
    """Refuse two items that would share cache files (same path, or paths with the same feature name)."""
    seen: dict[str, int] = {}
    clashes = []
    for i, entry in enumerate(entries):
        name = feature_name(entry["path"])
        if name in seen:
            first = entries[seen[name]]["path"]
            clashes.append(f"item {seen[name]} {first!r} and item {i} {entry['path']!r} -> {name!r}")
        else:
            seen[name] = i
    if clashes:
        shown = "".join(f"\n  {c}" for c in clashes[:10]) + (
            f"\n  ... {len(clashes) - 10} more" if len(clashes) > 10 else ""
        )
        raise ValueError(
            f"{json_path}: {len(clashes)} pair(s) of items map to the same feature file name, so one would overwrite "
            f"the other's caption and latent:{shown}\nrename the images (or drop the duplicates) and rebuild the list"
        )
