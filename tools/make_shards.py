"""Turn a data folder (``data_info.json`` + images, e.g. from tools/make_data_info.py, or the embedded default) into
WebDataset tar shards in the img2dataset layout, for training from shards (docs/data.md, "Training from shards").

    python tools/make_shards.py "my photos" --out output/my_shards --per-shard 1000
    python tools/make_shards.py output/embedded_data --out output/embedded_shards

Each shard ``OUT/00000.tar, ...`` holds per item ``{key}.<ext>`` (the image file as it is), ``{key}.txt`` (caption),
``{key}.json`` (height, width, path) and ``{key}.control.<ext>`` when the item has a ``control_path``;
``OUT/manifest.json`` lists samples, bytes and sha256 per shard and the skipped items. Bad items (unreadable or
truncated images, a declared size with another aspect ratio, an empty caption) are skipped and listed; --strict
makes them exit 1. The output is deterministic and written shard by shard (temporary file, then rename): rerunning
after a stop rewrites only the shards that are missing or whose items changed. Train with
``data = dict(type="ShardDataset", urls="OUT/{00000..0000N}.tar", ...)`` (the pattern is printed at the end).
"""

import argparse
import sys
from pathlib import Path

from diffusion.data.shards import make_shards


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("source", type=Path, help="folder with data_info.json (and the images it lists)")
    parser.add_argument("--out", type=Path, required=True, help="folder for the shards and manifest.json")
    parser.add_argument("--per-shard", type=int, default=1000, help="samples per shard (default 1000)")
    parser.add_argument("--json", default="data_info.json", help="item list inside SOURCE")
    parser.add_argument("--workers", type=int, default=4, help="threads checking (decoding) the images")
    parser.add_argument("--strict", action="store_true", help="exit 1 when any item was skipped")
    args = parser.parse_args(argv)
    if not args.source.is_dir():
        parser.error(f"{args.source} is not a folder")
    if args.per_shard < 1:
        parser.error(f"--per-shard must be at least 1, got {args.per_shard}")
    try:
        report = make_shards(args.source, args.out, args.per_shard, args.json, args.workers)
    except (FileNotFoundError, ValueError) as error:  # no data_info.json, a malformed one, no usable item
        print(f"error: {error}", file=sys.stderr)
        return 1
    print(f"wrote {args.out}: {report.summary()}")
    pattern = f"{args.out}/{{00000..{len(report.shards) - 1:05d}}}.tar"
    print(f'train with: data = dict(type="ShardDataset", urls="{pattern}", ...)')
    return 1 if report.skipped and args.strict else 0


if __name__ == "__main__":
    raise SystemExit(main())
