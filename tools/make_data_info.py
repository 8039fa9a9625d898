"""Build ``data_info.json`` for a folder of your own images (the item list PixArt-α/δ training reads, facts §6).

Captions come from a sidecar UTF-8 text file next to each image (``beach/IMG 01.jpg`` + ``beach/IMG 01.txt``), or
from a CSV (columns ``path,caption``), JSON list or JSONL (``{"path": ..., "caption": ...}`` per line) with paths
relative to FOLDER. Every image format Pillow opens here is used (.jpg, .png, .webp, .jfif, .tga, ...).
Sizes are the real ones as displayed (after EXIF orientation), read from the image headers. Nested folders and
spaces in names are fine; symlinked sub-folders are followed (a link back to a folder already walked is listed,
not followed). Images without a caption, captions that are not UTF-8, images that cannot be opened and
captions whose image is missing or in a format Pillow cannot open here are skipped and listed; two images
whose feature files would collide (``a.jpg`` and ``a.png``) are refused, naming both (exit 1, nothing written).

    python tools/make_data_info.py my_photos                        # sidecar .txt captions
    python tools/make_data_info.py my_photos --captions captions.csv --strict
Then: tools/extract_features.py --data-root my_photos ...  (see docs/data.md, "Train on your own images").
"""

import argparse
import csv
import errno
import glob
import io
import json
import os
import sys
from pathlib import Path

from PIL import Image
from tqdm import tqdm

from diffusion.data.images import oriented_size
from diffusion.data.info import check_unique_names

# Pillow formats that would need a plugin or external program to read: reported as unreadable if present
_STUB_FORMATS = {"BUFR", "GRIB", "HDF5", "EPS", "WMF", "MPEG"}
IMAGE_SUFFIXES = {
    ext for ext, fmt in Image.registered_extensions().items() if fmt in Image.OPEN and fmt not in _STUB_FORMATS
}  # every format Pillow can open here (.jfif, .tga, .webp, ...; .avif / .heic only with their plugins)
CAPTION_SUFFIX = ".txt"


def read_caption_table(path: Path) -> dict[str, str]:
    """``{relative image path: caption}`` from a CSV (header ``path,caption``), a JSON list or a JSONL file (UTF-8,
    with or without the BOM Excel's "CSV UTF-8" writes)."""
    try:
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as error:
        raise ValueError(f"{path} is not UTF-8 ({error}); save the caption table as UTF-8") from error
    if path.suffix.lower() in (".json", ".jsonl"):
        lines = [(1, text)] if path.suffix.lower() == ".json" else enumerate(text.splitlines(), start=1)
        rows = []
        for number, line in lines:
            try:
                rows += [json.loads(line)] if line.strip() else []
            except json.JSONDecodeError as error:
                raise ValueError(f"{path} line {number + error.lineno - 1}: not valid JSON ({error.msg})") from error
        rows = rows[0] if path.suffix.lower() == ".json" else rows
    else:
        rows = list(csv.DictReader(io.StringIO(text, newline="")))
    for i, row in enumerate(rows):
        if not isinstance(row, dict) or "path" not in row or "caption" not in row:
            got = sorted(row) if isinstance(row, dict) else type(row).__name__
            raise ValueError(f"{path}: row {i + 1} needs 'path' and 'caption' (got {got})")
    return {Path(row["path"]).as_posix(): str(row["caption"]).strip() for row in rows}


def read_sidecar(image: Path) -> tuple[str | None, str | None]:
    """(caption, None) from ``image``'s sidecar .txt, or (None, why it has none). Non-UTF-8 is refused, not guessed:
    a caption decoded with the wrong code page would train silently on wrong text."""
    sidecar = image.with_suffix(CAPTION_SUFFIX)
    if not sidecar.is_file():
        return None, "no caption (sidecar .txt missing or empty)"
    try:
        caption = sidecar.read_bytes().decode("utf-8-sig").strip()
    except UnicodeDecodeError as error:
        return None, f"caption {sidecar.name} is not UTF-8 ({error.reason} at byte {error.start}); re-save it as UTF-8"
    return caption or None, None if caption else "no caption (sidecar .txt missing or empty)"


def walk_files(folder: Path) -> tuple[list[Path], list[tuple[str, str]]]:
    """Every regular file under ``folder``, following symlinked sub-folders (``Path.rglob`` does not), sorted; and
    (path, reason) of each folder link already walked (a loop, or a second link to one folder) and of each broken or
    looping symlink named like an image."""
    files, skipped, walked = [], [], {}

    def visit(directory: Path, rel: str) -> None:
        stat = directory.stat()
        walked[(stat.st_dev, stat.st_ino)] = rel
        for entry in sorted(os.scandir(directory), key=lambda e: e.name):
            path, entry_rel = Path(entry.path), f"{rel}/{entry.name}" if rel != "." else entry.name
            if _is(entry.is_dir):  # follows symlinks
                target = path.stat()
                first = walked.get((target.st_dev, target.st_ino))
                if first is None:
                    visit(path, entry_rel)
                else:
                    skipped.append((entry_rel, f"a symlink to a folder already listed ({first!r}): not walked again"))
            elif _is(entry.is_file):
                files.append(path)
            elif entry.is_symlink() and path.suffix.lower() in IMAGE_SUFFIXES:
                skipped.append((entry_rel, not_an_image(path)))

    visit(folder, ".")
    return sorted(files), skipped


def _is(test) -> bool:
    """``DirEntry.is_dir`` / ``is_file``, False for a symlink loop (they raise ELOOP for one)."""
    try:
        return test()
    except OSError:
        return False


def not_an_image(path: Path) -> str:
    """What a path that no image can be read from is (a folder, a symlink loop, a broken symlink, ...)."""
    if path.is_symlink():
        try:
            path.resolve(strict=True)
        except RuntimeError:  # Python 3.11 raises RuntimeError for a loop
            return "a symlink loop"
        except OSError as error:
            if error.errno == errno.ELOOP:
                return "a symlink loop"
            return f"a broken symlink (to {os.readlink(path)})"
    if path.is_dir():
        return "a folder, not an image"
    if not path.exists():
        return "not found"
    if not path.is_file():
        return "not a regular file"
    return f"Pillow here cannot open {path.suffix.lower()} files"


def unmatched_sidecars(folder: Path, files: list[Path], images: list[Path], listed: set[str]) -> list[tuple[str, str]]:
    """(path, reason) of every caption .txt among ``files`` whose image is missing, not an image (a folder, a broken
    link) or in a format Pillow cannot open here; paths already in ``listed`` are not listed again."""
    stems = {image.with_suffix("") for image in images}
    skipped = []
    for sidecar in files:
        if sidecar.suffix != CAPTION_SUFFIX or sidecar.with_suffix("") in stems:
            continue
        others = sorted(p for p in sidecar.parent.glob(glob.escape(sidecar.stem) + ".*") if p != sidecar)
        if others:
            rel = others[0].relative_to(folder).as_posix()
            if rel not in listed:
                what = not_an_image(others[0])
                what = what if what.startswith("Pillow") else f"{others[0].name} is {what}"
                skipped.append((rel, f"has a caption ({sidecar.name}) but {what}"))
        else:
            skipped.append((sidecar.relative_to(folder).as_posix(), "a caption without an image"))
    return skipped


def build_items(
    folder: Path, captions: dict[str, str] | None = None, progress: bool = True
) -> tuple[list[dict], list[tuple[str, str]]]:
    """The data_info items of every image under ``folder`` and the (path, reason) of every skipped file."""
    files, skipped = walk_files(folder)
    images = [p for p in files if p.suffix.lower() in IMAGE_SUFFIXES]
    items = []
    for image in tqdm(images, desc="images", disable=not progress):
        rel = image.relative_to(folder).as_posix()
        if captions is not None:
            prompt, why = captions.get(rel), "no caption"
        else:
            prompt, why = read_sidecar(image)
        if not prompt:
            skipped.append((rel, why))
            continue
        try:
            height, width = oriented_size(image)
        except Exception as error:  # not an image Pillow can open
            skipped.append((rel, f"{type(error).__name__}: {error}"))
            continue
        items.append({"path": rel, "prompt": prompt, "height": height, "width": width, "ratio": height / width})
    if captions is None:
        skipped += unmatched_sidecars(folder, files, images, {path for path, _ in skipped})
    else:
        found = {item["path"] for item in items} | {path for path, _ in skipped}
        for path in sorted(set(captions) - found):
            exists = (folder / path).exists() or (folder / path).is_symlink()
            skipped.append((path, not_an_image(folder / path) if exists else "listed but not found"))
    return items, skipped


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("folder", type=Path, help="folder of images (searched recursively)")
    parser.add_argument("--captions", type=Path, help="CSV (path,caption) or JSONL instead of sidecar .txt files")
    parser.add_argument("--out", type=Path, help="default FOLDER/data_info.json")
    parser.add_argument("--strict", action="store_true", help="exit 1 when any image was skipped")
    args = parser.parse_args(argv)
    if not args.folder.is_dir():
        parser.error(f"{args.folder} is not a folder")
    captions = read_caption_table(args.captions) if args.captions else None
    items, skipped = build_items(args.folder, captions)
    out = args.out or args.folder / "data_info.json"
    try:
        check_unique_names(items, out)
    except ValueError as error:  # two images sharing cache file names: the message names both
        print(f"error: {error}", file=sys.stderr)
        return 1
    if not items:
        print(f"no captioned images found under {args.folder}", file=sys.stderr)
        return 1
    out.write_text(json.dumps(items, indent=1, ensure_ascii=False), encoding="utf-8")
    print(f"wrote {out}: {len(items)} items; {len(skipped)} skipped")
    for path, reason in skipped:
        print(f"  skipped: {path}: {reason}")
    return 1 if skipped and args.strict else 0


if __name__ == "__main__":
    raise SystemExit(main())
