"""Time ``FeatureDataset.__getitem__`` on a large item list (issue 9 item 5: per-item work must not grow with N).

The N items share one real caption file and one latent file through symlinks (cheap on tmpfs), so what is timed is
the dataset's own bookkeeping plus one small read, not the disk:
    python tools/benchmark_dataset.py --items 120000 --reads 300
"""

import argparse
import json
import os
import random
import tempfile
import time
from pathlib import Path

import numpy as np

from diffusion.data import FeatureDataset


def make_folder(root: Path, items: int, max_length: int = 8, channels: int = 16) -> None:
    """data_info.json with ``items`` 32x32 entries and their cache files (symlinks to one pair of files)."""
    caption, latent = root / "caption_features", root / "vae_features_32"
    caption.mkdir(parents=True)
    latent.mkdir()
    np.savez(root / "c.npz", caption_feature=np.zeros((1, max_length, channels), np.float32),
             attention_mask=np.ones((1, max_length), np.int64))  # fmt: skip
    np.save(root / "l.npy", np.zeros((24, 16, 16), np.float32))
    entries = []
    for i in range(items):
        name = f"{i:07d}"
        os.symlink(root / "c.npz", caption / f"{name}.npz")
        os.symlink(root / "l.npy", latent / f"{name}.npy")
        entries.append({"path": f"{name}.png", "prompt": "a photo", "height": 32, "width": 32})
    (root / "data_info.json").write_text(json.dumps(entries))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--items", type=int, default=120_000)
    parser.add_argument("--reads", type=int, default=300)
    parser.add_argument("--dir", default="/dev/shm" if Path("/dev/shm").is_dir() else None)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        make_folder(Path(tmp), args.items)
        start = time.perf_counter()
        dataset = FeatureDataset(tmp, resolution=32, max_length=8)
        built = time.perf_counter() - start
        indices = random.Random(0).sample(range(len(dataset)), min(args.reads, len(dataset)))
        start = time.perf_counter()
        for index in indices:
            dataset[index]
        per_item = (time.perf_counter() - start) / len(indices)
    print(f"{args.items} items: dataset built in {built:.2f} s, __getitem__ {per_item * 1e3:.3f} ms/item")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
