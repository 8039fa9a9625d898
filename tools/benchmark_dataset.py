"""Data-path benchmarks.

Default mode: time ``FeatureDataset.__getitem__`` on a large item list (issue 9 item 5: per-item work must not grow
with N). The N items share one real caption file and one latent file through symlinks (cheap on tmpfs), so what is
timed is the dataset's own bookkeeping plus one small read, not the disk:
    python tools/benchmark_dataset.py --items 120000 --reads 300

``--shards`` (issue 19 item 6): cache or stream?
  1. loader throughput at the same batch and loader workers: the shard loader (``ShardDataset``: tar reading,
     shuffle buffer, JPEG decode, resize to cover and centre crop) against the cached ``FeatureDataset`` (one
     ``.npy`` posterior and one T5 ``.npz`` per item, real files with T5-XXL's 120 x 4096 float32 captions), both
     over the same ``--items`` photos in a temporary folder (tmpfs: file-system cost left out), one epoch per loader
     and round, the rounds interleaved, medians;
  2. what streaming adds to a training step: the on-the-fly encoding (T5 + VAE encoder, ``BatchEncoder``) of one
     batch of those photos against the transformer step (DiffusionLoss forward + backward) at a ``diffusion.bench``
     size (``cpu``: XL width with 2 blocks, one T5-XXL layer, a small VAE, 256 px; ``full`` on a GPU), interleaved
     medians; the encoding's share of a step = encode / (encode + step).
    python tools/benchmark_dataset.py --shards --items 256 --batch 8 --workers 2 --rounds 5
    python tools/benchmark_dataset.py --shards --size full --device cuda --batch 12   # a GPU, full size
  ``--count-flops full``: the FLOPs of each part per image at full size (1024², T5-XXL, SD VAE, PixArtMS-XL/2),
  counted on meta tensors (no compute), the encoding's share of a step where no GPU is at hand.
"""

import argparse
import json
import os
import random
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np


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


def getitem_benchmark(args) -> None:
    from diffusion.data import FeatureDataset

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


WORDS = "a red blue small large photo of cat dog house tree car street city sunset beach portrait".split()


def make_photos(root: Path, items: int, height: int, width: int, seed: int = 0) -> None:
    """``items`` JPEG photos (smooth random colour fields, quality 90: sizes like real photos') with ~12-word captions
    and data_info.json."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    (root / "images").mkdir(parents=True)
    entries = []
    for i in range(items):
        small = rng.integers(0, 256, (height // 32, width // 32, 3), dtype=np.uint8)
        image = Image.fromarray(small).resize((width, height), Image.BICUBIC)
        image.save(root / "images" / f"{i:06d}.jpg", quality=90)
        prompt = " ".join(rng.choice(WORDS, 12))
        entries.append({"path": f"images/{i:06d}.jpg", "prompt": prompt, "height": height, "width": width})
    (root / "data_info.json").write_text(json.dumps(entries))


def make_caches(root: Path, resolution: int, max_length: int, channels: int) -> None:
    """One real posterior ``.npy`` (8, R/8, R/8) and one T5 ``.npz`` (1, L, C) float32 per item, as extraction writes
    them (random values: only their size matters here)."""
    from diffusion.data.features import caption_dir, feature_name, latent_dir

    rng = np.random.default_rng(0)
    caption, latent = caption_dir(root), latent_dir(root, resolution)
    caption.mkdir()
    latent.mkdir()
    side = resolution // 8
    for entry in json.loads((root / "data_info.json").read_text()):
        name = feature_name(entry["path"])
        np.save(latent / f"{name}.npy", rng.standard_normal((8, side, side), dtype=np.float32))
        mask = np.zeros((1, max_length), np.int64)
        mask[:, :20] = 1
        y = rng.standard_normal((1, max_length, channels), dtype=np.float32)
        np.savez(caption / f"{name}.npz", caption_feature=y, attention_mask=mask)


def epoch_seconds(make_iterator, samples: int, batch: int) -> float:
    """Wall seconds to take every batch of one epoch (``samples // batch`` batches) from a fresh iterator."""
    start = time.perf_counter()
    iterator = iter(make_iterator())
    for _ in range(samples // batch):
        next(iterator)
    return time.perf_counter() - start


def loader_benchmark(root: Path, args) -> dict[str, float]:
    """Median samples/s of one epoch of each loader over ``args.rounds`` interleaved rounds (order alternating)."""
    from diffusion.data import FeatureDataset, ShardDataset, collate
    from diffusion.engine.data_loop import BatchStream, EpochBatchSampler

    urls = sorted(str(path) for path in (root / "shards").glob("*.tar"))
    shard_set = ShardDataset(urls, resolution=args.resolution, shuffle_buffer=args.batch * 8)
    cached = FeatureDataset(root, args.resolution, args.max_length)
    n = (args.items // args.batch) * args.batch
    loaders = {
        "shards (decode + resize)": lambda: shard_set.stream(args.batch, num_workers=args.workers, seed=0),
        "feature caches": lambda: BatchStream(
            cached, EpochBatchSampler(cached, args.batch, 1, 0, 0), collate, args.workers, 0
        ),
    }
    times: dict[str, list[float]] = {name: [] for name in loaders}
    for r in range(args.rounds + 1):  # round 0 warms the page cache and the imports
        for name in list(loaders)[:: 1 if r % 2 else -1]:
            seconds = epoch_seconds(loaders[name], n, args.batch)
            if r:
                times[name].append(seconds)
    return {name: n / statistics.median(t) for name, t in times.items()}


def encoding_benchmark(root: Path, args) -> dict[str, float]:
    """Median seconds of T5, the VAE encoder, both (``BatchEncoder``) and the transformer step fwd+bwd at
    ``args.size``, on one batch of the photos."""
    import torch

    from diffusion.bench import get_size, measure, random_pixart, random_t5, random_vae
    from diffusion.data import AutoencoderKLCodec, ShardDataset
    from diffusion.data.encoding import BatchEncoder
    from diffusion.methods import DiffusionLoss

    size, device = get_size(args.size), torch.device(args.device)
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32  # encoders' weights, as encoding.dtype='auto'
    stream = ShardDataset(str(root / "shards" / "00000.tar"), resolution=size.resolution).stream(args.batch)
    batch = next(iter(stream))
    t5 = random_t5(size, device, dtype)
    encoder = BatchEncoder(AutoencoderKLCodec(random_vae(size, device, dtype), dtype=dtype), t5, 0.18215, device)
    model = random_pixart(size).to(device).train()
    method = DiffusionLoss(model).to(device)
    prepared = encoder(batch)
    images = batch["image"].to(device).float() / 127.5 - 1
    amp = torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda")

    def step():
        with torch.enable_grad(), amp:
            loss, _ = method(model, prepared)
        loss.backward()
        model.zero_grad(set_to_none=True)

    fns = {
        "T5 encode": lambda: t5.encode(list(batch["prompt"])),
        "VAE encode": lambda: encoder.codec.encode(images),
        "on-the-fly encoding (T5 + VAE)": lambda: encoder(batch),
        "transformer step fwd+bwd": step,
    }
    result = measure(fns, args.rounds, device, warmup=1)
    tokens = int(t5.tokenizer(list(batch["prompt"]), padding="longest", return_tensors="pt").input_ids.shape[1])
    return {**result, "tokens": tokens, "describe": size.describe()}


def count_flops(size_name: str, tokens: int = 20) -> dict[str, float]:
    """FLOPs per image (torch's ``FlopCounterMode``, on the meta device: nothing is computed or allocated) of the VAE
    encoder, T5 on a ``tokens``-token caption and the transformer's forward + backward at a ``diffusion.bench``
    size (the transformer sees every caption token: no padding to trim on meta tensors)."""
    import torch
    from diffusers import AutoencoderKL
    from mmengine.config import Config
    from torch.utils.flop_counter import FlopCounterMode
    from transformers import T5Config, T5EncoderModel

    from diffusion.bench import LCM_CONFIG, get_size
    from diffusion.build import build_model

    def flops(fn) -> float:
        with FlopCounterMode(display=False) as counter:
            fn()
        return float(counter.get_total_flops())

    size = get_size(size_name)
    side, depth = size.resolution // 8, len(size.vae["block_out_channels"])
    with torch.device("meta"):
        blocks = ("DownEncoderBlock2D",) * depth, ("UpDecoderBlock2D",) * depth
        vae = AutoencoderKL(down_block_types=blocks[0], up_block_types=blocks[1], latent_channels=4, **size.vae)
        t5 = T5EncoderModel(T5Config(**size.t5, feed_forward_proj="gated-gelu", is_encoder_decoder=False))
        model_cfg = dict(Config.fromfile(str(LCM_CONFIG)).model, input_size=side, **size.model)
        model = build_model({"model": model_cfg}, load_weights=False)
        x, t = torch.empty(1, 4, side, side), torch.zeros(1, dtype=torch.long)
        y = torch.empty(1, 1, tokens, model.caption_channels)
        info = {"img_hw": torch.empty(1, 2), "aspect_ratio": torch.empty(1, 1)}
        return {
            "VAE encode": flops(lambda: vae.encode(torch.empty(1, 3, size.resolution, size.resolution))),
            f"T5 encode ({tokens} tokens)": flops(lambda: t5(input_ids=torch.zeros(1, tokens, dtype=torch.long))),
            "transformer step fwd+bwd": flops(lambda: model(x, t, y, None, info).sum().backward()),
        }


def shard_benchmark(args) -> None:
    from diffusion.bench import machine
    from diffusion.data.shards import make_shards

    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        root = Path(tmp)
        h, w = (int(v) for v in args.image_size.split("x"))
        make_photos(root, args.items, h, w)
        make_shards(root, root / "shards", per_shard=args.per_shard, progress=False)
        make_caches(root, args.resolution, args.max_length, args.caption_channels)
        mib = {kind: sum(f.stat().st_size for f in (root / kind).rglob("*") if f.is_file()) / 2**20
               for kind in ("shards", "caption_features", f"vae_features_{args.resolution}")}  # fmt: skip
        print(f"{machine()}; {args.items} JPEG photos {h}x{w} -> {args.resolution}² px, batch {args.batch}, "
              f"{args.workers} loader workers, {args.rounds} interleaved rounds (medians)")  # fmt: skip
        print("storage: " + ", ".join(f"{k} {v:.1f} MiB" for k, v in mib.items()))
        for name, rate in loader_benchmark(root, args).items():
            print(f"  {name}: {rate:.0f} samples/s")
        if not args.no_encoding:
            result = encoding_benchmark(root, args)
            print(f"encoding vs step, {result.pop('describe')}; batch {args.batch}, {result.pop('tokens')} T5 tokens:")
            for name, seconds in result.items():
                print(f"  {name}: {seconds * 1e3:.0f} ms")
            encode, step = result["on-the-fly encoding (T5 + VAE)"], result["transformer step fwd+bwd"]
            print(f"  the encoding's share of a step (encode + fwd+bwd): {encode / (encode + step):.1%}")
    if args.count_flops:
        counted = count_flops(args.count_flops)
        print(f"counted FLOPs per image, {args.count_flops} size (FlopCounterMode on meta tensors):")
        for name, value in counted.items():
            print(f"  {name}: {value / 1e12:.3f} TFLOP")
        encode = sum(v for k, v in counted.items() if "encode" in k)
        print(f"  the encoding's share of a step's FLOPs: {encode / sum(counted.values()):.1%}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--items", type=int, default=None, help="items (default 120000; --shards: 256)")
    parser.add_argument("--reads", type=int, default=300)
    parser.add_argument("--dir", default="/dev/shm" if Path("/dev/shm").is_dir() else None)
    shards = parser.add_argument_group("--shards")
    shards.add_argument("--shards", action="store_true", help="the shard loader and on-the-fly encoding vs caches")
    shards.add_argument("--image-size", default="512x768", help="HxW of the JPEG photos")
    shards.add_argument("--resolution", type=int, default=256, help="training resolution of the loader comparison")
    shards.add_argument("--batch", type=int, default=8)
    shards.add_argument("--workers", type=int, default=2, help="DataLoader workers of both loaders")
    shards.add_argument("--per-shard", type=int, default=64)
    shards.add_argument("--max-length", type=int, default=120, help="T5 tokens per cached caption")
    shards.add_argument("--caption-channels", type=int, default=4096, help="T5 width of the cached captions")
    shards.add_argument("--rounds", type=int, default=5)
    shards.add_argument("--size", default="cpu", help="diffusion.bench size of the encoding part: tiny, cpu, full")
    shards.add_argument("--device", default="cpu")
    shards.add_argument("--no-encoding", action="store_true", help="the loader comparison only")
    what = "also count FLOPs per image at a diffusion.bench size (e.g. full) on meta tensors"
    shards.add_argument("--count-flops", metavar="SIZE", default=None, help=what)
    args = parser.parse_args(argv)
    if args.shards:
        args.items = args.items or 256
        shard_benchmark(args)
    else:
        args.items = args.items or 120_000
        getitem_benchmark(args)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
