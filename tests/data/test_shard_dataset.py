"""ShardDataset / ShardStream: every sample once per epoch over 2 ranks x 2 loader workers (none twice), fewer shards
than readers, aspect-ratio buckets from the json size with the extraction's resize and crop, corrupt members and
missing or truncated shards skipped and named, config keys checked by the registry."""

import json
import tarfile

import pytest
import torch

from diffusion.data.buckets import closest_bucket
from diffusion.data.embedded import make_embedded_data
from diffusion.data.images import load_image
from diffusion.data.shards import ShardDataset, make_shards
from diffusion.registry import DATASETS
from tests.commands import load_command
from tests.data.shard_helpers import keys, one_epoch, png, streams, write_tar

N = 30


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    root = tmp_path_factory.mktemp("shard_dataset")
    make_embedded_data(root / "data", num=N, seed=0)
    make_shards(root / "data", root / "shards", per_shard=4, progress=False)  # 8 shards: 7 of 4, one of 2
    return root


def _all_keys() -> set[str]:
    return {f"{i:09d}" for i in range(N)}


@pytest.mark.parametrize("workers", [0, 2])
def test_every_sample_once_per_epoch_over_ranks_and_workers(shards, workers):
    urls = str(shards / "shards" / "{00000..00007}.tar")
    seen = []
    for epoch in range(2):
        ranks = streams(urls, world_size=2, workers=workers, batch_size=1, shuffle_buffer=5)
        for stream in ranks:
            stream.epoch = epoch  # the epoch's own shard order and draws
            seen.append(keys(one_epoch(stream)))
        assert sorted(seen[-1] + seen[-2]) == sorted(_all_keys())  # all, none twice
    assert seen[0] != seen[2]  # reshuffled per epoch


def test_partial_buckets_are_dropped_and_counted(shards):
    ranks = streams(str(shards / "shards" / "{00000..00007}.tar"), world_size=2, workers=2, batch_size=3)
    seen = [keys(one_epoch(stream)) for stream in ranks]
    dropped = sum(stream.dropped for stream in ranks)
    assert len(seen[0] + seen[1]) == len(set(seen[0] + seen[1])) == N - dropped and dropped > 0
    assert "samples per rank per epoch (manifest): [16, 14] - uneven" in ranks[0].describe()  # 4 shards of 4; 3 + 2
    assert f"{ranks[0].dropped} samples left in partial buckets (drop_last)" in ranks[0].epoch_report()


def test_fewer_shards_than_readers_still_sees_every_sample_once(shards):
    urls = [str(shards / "shards" / f"0000{i}.tar") for i in range(3)]  # 12 samples, 2 ranks x 2 workers
    ranks = streams(urls, world_size=2, workers=2, batch_size=1)
    seen = [key for stream in ranks for key in keys(one_epoch(stream))]
    assert sorted(seen) == sorted(f"{i:09d}" for i in range(12))
    assert "fewer shards than readers" in ranks[0].describe()


def test_items_are_the_extractions_pixels_in_their_json_buckets(tmp_path):
    sizes = [(32, 32), (16, 40), (40, 16), (20, 38), (32, 32), (16, 42)]  # (h, w): three buckets at resolution 32
    entries = []
    (tmp_path / "data").mkdir()
    for i, (h, w) in enumerate(sizes):
        (tmp_path / "data" / f"{i}.png").write_bytes(png((h, w), 30 * i))
        entries.append({"path": f"{i}.png", "prompt": f"picture {i}", "height": h, "width": w})
    (tmp_path / "data" / "data_info.json").write_text(json.dumps(entries))
    make_shards(tmp_path / "data", tmp_path / "shards", per_shard=2, progress=False)
    dataset = ShardDataset(str(tmp_path / "shards" / "{00000..00002}.tar"), resolution=32, multi_scale=True)
    batches = one_epoch(dataset.stream(batch_size=2, seed=3))
    assert sum(len(b["key"]) for b in batches) == 4  # (32,32) x2 and the two wide ones; the tall one is alone
    for batch in batches:
        for image, key, hw, ratio in zip(batch["image"], batch["key"], batch["img_hw"], batch["aspect_ratio"]):
            h, w = sizes[int(key)]
            bucket, target = closest_bucket(h, w, 32)
            assert image.dtype == torch.uint8 and tuple(image.shape) == (3, *target)
            assert hw.tolist() == [h, w] and ratio.item() == pytest.approx(float(bucket))
            extracted = load_image(tmp_path / "data" / f"{int(key)}.png", target, (h, w))  # the cache path's pixels
            assert torch.equal(image.float() / 127.5 - 1, extracted)


def test_corrupt_members_and_missing_or_truncated_shards_are_skipped_and_named(shards, tmp_path):
    good = {"txt": b"a caption", "json": b'{"height": 32, "width": 32}'}
    write_tar(tmp_path / "odd.tar", [
        {"__key__": "ok1", "png": png(), **good},
        {"__key__": "badimage", "png": b"not a png", **good},
        {"__key__": "nocaption", "png": png(), "json": good["json"]},
        {"__key__": "badjson", "png": png(), "txt": b"x", "json": b"{height"},
        {"__key__": "nosize", "png": png(), "txt": b"x", "json": b'{"height": 0, "width": 32}'},
        {"__key__": "latin1", "png": png(), "txt": "caf\u00e9".encode("cp1252"), "json": good["json"]},
        {"__key__": "wrongsize", "png": png((32, 32)), "txt": b"x", "json": b'{"height": 16, "width": 40}'},
        {"__key__": "ok2", "png": png(), **good},
    ])  # fmt: skip
    with tarfile.open(shards / "shards" / "00001.tar") as tar:
        cut = tar.getmembers()[9].offset_data + 10  # inside the third sample's second member
    (tmp_path / "cut.tar").write_bytes((shards / "shards" / "00001.tar").read_bytes()[:cut])
    urls = [str(tmp_path / "odd.tar"), str(tmp_path / "missing.tar"), str(tmp_path / "cut.tar")]
    dataset = ShardDataset(urls, resolution=32, shuffle_buffer=0)
    seen = keys(one_epoch(dataset.stream(batch_size=1, num_workers=2)))
    assert {"ok1", "ok2"} <= set(seen) and not {"badimage", "nocaption", "badjson", "nosize", "latin1"} & set(seen)
    assert "wrongsize" not in seen and len(seen) == 4  # ok1, ok2 and the cut shard's first two samples
    report = dataset.report()
    for key, reason in [
        ("badimage", "UnidentifiedImageError"),
        ("nocaption", "no caption"),
        ("badjson", "JSON"),
        ("nosize", "'height' is 0"),
        ("latin1", "not UTF-8"),
        ("wrongsize", "declares height 16"),
    ]:
        assert any(k == key and reason in r and u.endswith("odd.tar") for u, k, r in dataset.skipped_items), key
    assert any(u.endswith("missing.tar") and "missing" in r for u, _, r in dataset.skipped_items)
    assert any(u.endswith("cut.tar") and "breaks off after" in r for u, _, r in dataset.skipped_items)
    assert any(k == "000000006" and "no image member" in r for _, k, r in dataset.skipped_items)  # cut short
    assert dataset.skipped == 9 and dataset.skipped_shards == 2
    assert "9 skipped so far (2 whole shard(s))" in report and "skipped " in report


def test_config_keys_are_checked_by_the_registry(shards):
    cfg = dict(type="ShardDataset", urls=str(shards / "shards" / "{00000..00007}.tar"), resolution=32)
    assert DATASETS.build(cfg).num_samples == N
    with pytest.raises(KeyError, match=r"unknown key\(s\) \['shuffle_bufer'\] in config section 'data'"):
        DATASETS.build(dict(cfg, shuffle_bufer=10))
    with pytest.raises(KeyError, match=r"missing required key\(s\) \['resolution'\]"):
        DATASETS.build(dict(type="ShardDataset", urls=cfg["urls"]))
    with pytest.raises(ValueError, match="on_layout_change"):
        DATASETS.build(dict(cfg, on_layout_change="maybe"))
    with pytest.raises(ValueError, match="names no shard"):
        DATASETS.build(dict(cfg, urls=[]))


def test_awkward_photos_decode_through_shards_as_through_extraction(tmp_path, capsys):
    """EXIF-rotated, 16-bit, RGBA, CMYK, palette, grayscale, very wide / tall photos (make_data_info's real sizes):
    the shard items are the pixels extraction would encode; the truncated photo is caught by make_shards."""
    from tests.data.test_own_images import make_photo_folder

    make_data_info = load_command("tools/make_data_info.py").main

    sizes = make_photo_folder(tmp_path / "photos")
    assert make_data_info([str(tmp_path / "photos")]) == 0
    report = make_shards(tmp_path / "photos", tmp_path / "shards", per_shard=4, progress=False)
    assert [path for path, _ in report.skipped] == ["broken/cut.jpg"]
    entries = json.loads((tmp_path / "photos" / "data_info.json").read_text())
    urls = str(tmp_path / "shards" / f"{{00000..{len(report.shards) - 1:05d}}}.tar")
    batches = one_epoch(ShardDataset(urls, resolution=32, multi_scale=True).stream(batch_size=1, num_workers=2))
    assert sorted(entries[int(key)]["path"] for key in keys(batches)) == sorted(sizes)
    for batch in batches:
        entry = entries[int(batch["key"][0])]
        h, w = sizes[entry["path"]]
        target = closest_bucket(h, w, 32)[1]
        expected = load_image(tmp_path / "photos" / entry["path"], target, (h, w))
        assert torch.equal(batch["image"][0].float() / 127.5 - 1, expected), entry["path"]


def test_img2dataset_shards_read_as_they_are(tmp_path):
    """img2dataset's layout: ``{key}.jpg`` resized, json with its size and the original one, ``<shard>_stats.json``."""
    import io

    from PIL import Image

    samples = []
    for i, (h, w) in enumerate([(24, 48), (48, 24), (24, 48)]):
        buffer = io.BytesIO()
        Image.new("RGB", (w, h), (9 * i, 50, 90)).save(buffer, "JPEG")
        meta = {"key": f"{i:09d}", "caption": "c", "status": "success", "url": "http://x", "height": h, "width": w,
                "original_height": 4 * h, "original_width": 4 * w}  # fmt: skip
        samples.append(
            {"__key__": f"{i:09d}", "jpg": buffer.getvalue(), "txt": b"a photo", "json": json.dumps(meta).encode()}
        )
    write_tar(tmp_path / "00000.tar", samples)
    (tmp_path / "00000_stats.json").write_text(json.dumps({"count": 4, "successes": 3}))
    dataset = ShardDataset(str(tmp_path / "{00000..00000}.tar"), resolution=32, multi_scale=True)
    assert dataset.num_samples == 3
    batches = one_epoch(dataset.stream(batch_size=1))
    for batch in batches:
        h, w = {"000000001": (48, 24)}.get(batch["key"][0], (24, 48))
        assert batch["img_hw"][0].tolist() == [4 * h, 4 * w]  # the micro-condition: the original size
        assert tuple(batch["image"].shape[2:]) == closest_bucket(h, w, 32)[1]
    assert len(batches) == 3


def test_no_shard_at_all_is_an_error_naming_the_pattern(tmp_path):
    """One missing shard among others is skipped and reported; a pattern that names no existing file (a typo, shards
    not made yet) would only stop two empty epochs into the run: refused when the dataset is built."""
    pattern = str(tmp_path / "nowhere" / "{00000..00003}.tar")
    with pytest.raises(FileNotFoundError, match=r"(?s)none of the 4 shard\(s\) of data\.urls.*nowhere.*make_shards"):
        ShardDataset(pattern, resolution=32)
