"""Build ``data_info.json`` for a folder of your own images (the item list PixArt-α/δ training reads, facts §6).

Captions come from a sidecar text file next to each image (``beach/IMG 01.jpg`` + ``beach/IMG 01.txt``), or from a
CSV (columns ``path,caption``) or JSONL (``{"path": ..., "caption": ...}`` per line) with paths relative to FOLDER.
Sizes are the real ones as displayed (after EXIF orientation), read from the image headers. Nested folders and
spaces in names are fine. Images without a caption or that cannot be opened are skipped and listed; two images
whose feature files would collide (``a.jpg`` and ``a.png``) are refused, naming both.

    python tools/make_data_info.py my_photos                        # sidecar .txt captions
    python tools/make_data_info.py my_photos --captions captions.csv --strict
Then: tools/extract_features.py --data-root my_photos ...  (see docs/readme/data.md, "Train on your own images").
"""

import argparse
import csv
import json
import sys
from pathlib import Path

from tqdm import tqdm

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from anywhere without installing the repo

from diffusion.data.images import oriented_size  # noqa: E402
from diffusion.data.info import check_unique_names  # noqa: E402

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff", ".gif"}


def read_caption_table(path: Path) -> dict[str, str]:
    """``{relative image path: caption}`` from a CSV (header ``path,caption``) or a JSONL file."""
    if path.suffix.lower() == ".jsonl":
        rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    else:
        with open(path, newline="", encoding="utf-8") as f:
            rows = list(csv.DictReader(f))
    for i, row in enumerate(rows):
        if "path" not in row or "caption" not in row:
            raise ValueError(f"{path}: row {i + 1} needs 'path' and 'caption' (got {sorted(row)})")
    return {Path(row["path"]).as_posix(): str(row["caption"]).strip() for row in rows}


def build_items(
    folder: Path, captions: dict[str, str] | None = None, progress: bool = True
) -> tuple[list[dict], list[tuple[str, str]]]:
    """The data_info items of every image under ``folder`` and the (path, reason) of every skipped image."""
    images = sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    items, skipped = [], []
    for image in tqdm(images, desc="images", disable=not progress):
        rel = image.relative_to(folder).as_posix()
        if captions is not None:
            prompt = captions.get(rel)
        else:
            sidecar = image.with_suffix(".txt")
            prompt = sidecar.read_text(encoding="utf-8").strip() if sidecar.is_file() else None
        if not prompt:
            skipped.append((rel, "no caption (sidecar .txt missing or empty)" if captions is None else "no caption"))
            continue
        try:
            height, width = oriented_size(image)
        except Exception as error:  # not an image Pillow can open
            skipped.append((rel, f"{type(error).__name__}: {error}"))
            continue
        items.append({"path": rel, "prompt": prompt, "height": height, "width": width, "ratio": height / width})
    if captions is not None:
        found = {item["path"] for item in items} | {path for path, _ in skipped}
        skipped += [(path, "listed in the caption table but not found") for path in sorted(set(captions) - found)]
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
    check_unique_names(items, out)
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
