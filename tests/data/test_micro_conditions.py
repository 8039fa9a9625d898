"""PixArtMS micro-conditions as the official datasets give them (issue 22 item 4): single-scale data passes
``img_hw = (R, R)`` and ``aspect_ratio = 1.0`` (official ``InternalData`` / ``InternalDataHed``: the pipeline samples
an R x R image with exactly those), multi-scale data the original (h, w) and the bucket key (``InternalDataMS``).
Both the feature caches and the shards."""

import io
import json
import shutil

import pytest
import torch
from PIL import Image

from diffusion.data import FeatureDataset, PixelCodec, TextEncoder, extract_features
from diffusion.data.shards import ShardDataset
from tests.data.shard_helpers import one_epoch, write_tar


@pytest.fixture()
def wide_root(embedded_root, tmp_path, tiny_text_encoder_dir, max_length):
    """The embedded data declared as 16 x 64 originals (every other item), features extracted single-scale and
    multi-scale."""
    root = shutil.copytree(embedded_root, tmp_path / "data")
    entries = json.loads((root / "data_info.json").read_text())
    for i, entry in enumerate(entries):
        entry["height"], entry["width"] = (32, 32) if i % 2 else (16, 64)
    (root / "data_info.json").write_text(json.dumps(entries))
    t5 = TextEncoder.from_pretrained(tiny_text_encoder_dir, max_length=max_length)
    for multi_scale in (False, True):
        extract_features(root, t5, PixelCodec(), 32, multi_scale=multi_scale, progress=False, check_sizes=False)
    return root


def test_feature_dataset_single_scale_passes_the_training_size(wide_root, max_length):
    single = FeatureDataset(wide_root, 32, max_length)
    for index in (0, 1):  # a wide original and a square one: both trained as a 32 x 32 crop
        assert torch.equal(single[index]["img_hw"], torch.tensor([32.0, 32.0]))
        assert torch.equal(single[index]["aspect_ratio"], torch.tensor([1.0]))
    multi = FeatureDataset(wide_root, 32, max_length, multi_scale=True)
    assert torch.equal(multi[0]["img_hw"], torch.tensor([16.0, 64.0]))  # the original size, as InternalDataMS
    assert torch.equal(multi[0]["aspect_ratio"], torch.tensor([0.25]))


def _jpeg(h: int, w: int) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (w, h), (200, 50, 90)).save(buffer, "JPEG")
    return buffer.getvalue()


def test_shard_dataset_single_scale_passes_the_training_size(tmp_path):
    meta = {"height": 24, "width": 48, "original_height": 96, "original_width": 192}  # img2dataset: a resized copy
    sample = {"__key__": "000000000", "jpg": _jpeg(24, 48), "txt": b"a photo", "json": json.dumps(meta).encode()}
    write_tar(tmp_path / "00000.tar", [sample])
    url = str(tmp_path / "00000.tar")
    [single] = one_epoch(ShardDataset(url, resolution=32).stream(batch_size=1))
    assert single["img_hw"].tolist() == [[32.0, 32.0]] and single["aspect_ratio"].tolist() == [[1.0]]
    [multi] = one_epoch(ShardDataset(url, resolution=32, multi_scale=True).stream(batch_size=1))
    assert multi["img_hw"].tolist() == [[96.0, 192.0]] and multi["aspect_ratio"].tolist() == [[0.5]]
