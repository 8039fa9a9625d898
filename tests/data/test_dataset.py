"""FeatureDataset items follow docs/design.md; bad input is skipped and counted, malformed input is an error."""

import json
import shutil

import numpy as np
import pytest
import torch

from diffusion.data import (
    FeatureDataset,
    PixelCodec,
    TextEncoder,
    collate,
    extract_features,
    feature_name,
    prepare_batch,
)
from diffusion.registry import DATASETS

from .conftest import NUM_IMAGES


@pytest.fixture()
def root(embedded_root, tmp_path):
    """A private copy of the session's embedded data, free to damage."""
    return shutil.copytree(embedded_root, tmp_path / "data")


def _latent_file(root, index):
    entry = json.loads((root / "data_info.json").read_text())[index]
    return root / "vae_features_32" / f"{feature_name(entry['path'])}.npy"


def test_items_match_the_contract(embedded_root, max_length):
    dataset = DATASETS.build(
        dict(type="FeatureDataset", root=str(embedded_root), resolution=32, max_length=max_length, load_control=True)
    )
    assert len(dataset) == NUM_IMAGES and dataset.skipped == 0
    entries = json.loads((embedded_root / "data_info.json").read_text())
    for index in (0, 7):
        item = dataset[index]
        assert item["vae_feat"].shape == (24, 16, 16) and item["vae_feat"].dtype == torch.float32
        assert item["control_feat"].shape == (24, 16, 16)
        assert item["y"].shape == (1, max_length, 64) and item["y"].dtype == torch.float32
        assert item["y_mask"].shape == (max_length,) and item["y_mask"].dtype == torch.long
        assert int(item["y_mask"].sum()) == len(entries[index]["prompt"].split()) + 1
        assert torch.equal(item["img_hw"], torch.tensor([32.0, 32.0]))
        assert torch.equal(item["aspect_ratio"], torch.tensor([1.0]))
        assert item["prompt"] == entries[index]["prompt"] and item["index"] == index
    assert dataset.aspect_ratios == [1.0] * NUM_IMAGES
    assert "24 items, 0 skipped" in dataset.report()


def test_collate_and_prepare_batch(embedded_root, max_length):
    dataset = FeatureDataset(embedded_root, 32, max_length, load_control=True)
    batch = collate([dataset[i] for i in range(3)])
    assert batch["vae_feat"].shape == (3, 24, 16, 16) and batch["index"].tolist() == [0, 1, 2]
    assert isinstance(batch["prompt"], list) and len(batch["prompt"]) == 3
    prepared = prepare_batch(batch, scale_factor=0.5, generator=torch.Generator().manual_seed(0), device="cpu")
    assert set(prepared) == {"x0", "y", "y_mask", "data_info", "prompt", "c"}
    assert prepared["x0"].shape == (3, 12, 16, 16) and prepared["c"].shape == (3, 12, 16, 16)
    torch.testing.assert_close(prepared["x0"], batch["vae_feat"][:, :12] * 0.5)  # pixel codec: std = 0
    assert prepared["y"].shape == (3, 1, max_length, 64) and prepared["y_mask"].shape == (3, max_length)
    assert prepared["data_info"]["img_hw"].shape == (3, 2)
    assert prepared["data_info"]["aspect_ratio"].shape == (3, 1)
    assert FeatureDataset.prepare_batch is prepare_batch and FeatureDataset.collate is collate


def test_prepare_batch_samples_the_posterior():
    feat = torch.cat([torch.full((2, 4, 3, 3), 2.0), torch.full((2, 4, 3, 3), 0.5)], dim=1)
    batch = {"vae_feat": feat, "y": torch.zeros(2, 1, 5, 8), "y_mask": torch.ones(2, 5), "prompt": ["a", "b"]}
    batch |= {"img_hw": torch.ones(2, 2), "aspect_ratio": torch.ones(2, 1)}
    a = prepare_batch(batch, 0.18215, torch.Generator().manual_seed(1))["x0"]
    b = prepare_batch(batch, 0.18215, torch.Generator().manual_seed(1))["x0"]
    c = prepare_batch(batch, 0.18215, torch.Generator().manual_seed(2))["x0"]
    eps = torch.randn(2, 4, 3, 3, generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(a, (2.0 + 0.5 * eps) * 0.18215)
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_missing_feature_file_is_skipped_and_counted(root, max_length):
    _latent_file(root, 5).unlink()
    dataset = FeatureDataset(root, 32, max_length)
    assert len(dataset) == NUM_IMAGES - 1 and dataset.skipped == 1
    assert "1 skipped" in dataset.report() and "missing feature file" in dataset.report()
    entries = json.loads((root / "data_info.json").read_text())
    kept = [entry["prompt"] for j, entry in enumerate(entries) if j != 5]
    assert [dataset[i]["prompt"] for i in range(len(dataset))] == kept


def test_unreadable_file_is_replaced_by_the_next_item_and_counted(root, max_length):
    _latent_file(root, 3).write_bytes(b"garbage")
    dataset = FeatureDataset(root, 32, max_length)
    assert dataset.skipped == 0
    with pytest.warns(UserWarning, match=r"skipping images/00003\.png, unreadable cache .*images_00003\.npy"):
        item = dataset[3]
    assert item["index"] == 4 and dataset.skipped == 1 and dataset.replaced == 1
    assert dataset[3]["index"] == 4 and dataset.skipped == 1 and dataset.replaced == 2  # deterministic
    report = dataset.report()
    assert "1 skipped, 2 replaced" in report and "images/00003.png" in report and "images_00003.npy" in report


def test_missing_json_field_names_file_and_field(root, max_length):
    entries = json.loads((root / "data_info.json").read_text())
    del entries[2]["height"]
    (root / "data_info.json").write_text(json.dumps(entries))
    with pytest.raises(ValueError, match=r"data_info\.json.*item 2.*height"):
        FeatureDataset(root, 32, max_length)


def test_wrong_latent_shape_names_file_and_shape(root, max_length):
    np.save(_latent_file(root, 1), np.zeros((24, 8, 8), np.float32))
    dataset = FeatureDataset(root, 32, max_length)
    with pytest.raises(ValueError, match=r"images_00001\.npy.*\(24, 8, 8\).*\(24, 16, 16\)"):
        dataset[1]


def test_wrong_caption_length_names_file_and_shape(root, max_length):
    with pytest.raises(ValueError, match=rf"caption_features/meta\.json.*max_length {max_length}.*data\.max_length"):
        FeatureDataset(root, 32, max_length + 1)  # the cache records its max_length: refused up front
    (root / "caption_features" / "meta.json").unlink()  # an older cache without a record: checked per file
    dataset = FeatureDataset(root, 32, max_length + 1)
    with pytest.raises(ValueError, match=rf"images_00000\.npz.*caption_feature.*\(1, {max_length}, 64\)"):
        dataset[0]


def test_multi_scale_items_and_buckets(root, max_length, tiny_text_encoder_dir):
    """Non-square entries: aspect_ratio is the bucket key, img_hw the original size, fallback stays in-bucket."""
    entries = json.loads((root / "data_info.json").read_text())
    for i, entry in enumerate(entries):
        entry["height"], entry["width"] = (32, 32) if i % 2 else (16, 64)
    (root / "data_info.json").write_text(json.dumps(entries))
    t5 = TextEncoder.from_pretrained(tiny_text_encoder_dir, max_length=max_length)
    extract_features(root, t5, PixelCodec(), 32, multi_scale=True, progress=False, check_sizes=False)  # fake sizes
    dataset = FeatureDataset(root, 32, max_length, multi_scale=True)
    wide, square = dataset[0], dataset[1]
    assert wide["vae_feat"].shape == (24, 8, 32) and square["vae_feat"].shape == (24, 16, 16)
    assert torch.equal(wide["aspect_ratio"], torch.tensor([0.25]))
    assert torch.equal(wide["img_hw"], torch.tensor([16.0, 64.0]))
    (root / "vae_features_32_ms" / f"{feature_name(entries[2]['path'])}.npy").write_bytes(b"x")
    assert dataset[2]["index"] == 4  # next readable item of the same (wide) bucket


def test_file_deleted_after_build_is_replaced_warned_and_reported(root, max_length):
    dataset = FeatureDataset(root, 32, max_length)
    _latent_file(root, 6).unlink()  # e.g. a cleanup job or a full disk while training
    with pytest.warns(UserWarning, match=r"images/00006\.png"):
        assert dataset[6]["index"] == 7
    assert dataset.skipped == 1 and dataset.replaced == 1
    assert "images/00006.png" in dataset.report() and "FileNotFoundError" in dataset.report()


def test_skips_in_dataloader_workers_reach_the_main_process(root, max_length):
    """Workers hold copies of the dataset; what they skip must still show in the epoch report."""
    from diffusion.engine.data_loop import BatchStream

    _latent_file(root, 2).write_bytes(b"truncated")
    _latent_file(root, 9).write_bytes(b"")
    dataset = FeatureDataset(root, 32, max_length)
    sampler = torch.utils.data.BatchSampler(range(len(dataset)), batch_size=6, drop_last=False)
    stream = BatchStream(dataset, sampler, collate, num_workers=2, seed=0)
    batches = [batch for _, batch in zip(range(4), stream)]  # exactly one epoch
    assert all("skipped" not in batch for batch in batches)  # consumed by the stream
    assert dataset.skipped == 2 and dataset.replaced == 2
    assert {path for path, _ in dataset.skipped_items} == {"images/00002.png", "images/00009.png"}


def test_mixed_caption_widths_name_the_file_and_config_key(root, max_length):
    name = feature_name(json.loads((root / "data_info.json").read_text())[4]["path"])
    np.savez(
        root / "caption_features" / f"{name}.npz",
        caption_feature=np.zeros((1, max_length, 32), np.float32),
        attention_mask=np.ones((1, max_length), np.int64),
    )  # one file from another text encoder
    dataset = FeatureDataset(root, 32, max_length)
    assert dataset.caption_channels == 64  # from caption_features/meta.json
    with pytest.raises(ValueError, match=rf"{name}\.npz: caption_feature has 32 channels.*meta\.json says 64"):
        dataset[4]
    with pytest.raises(ValueError, match=r"captions have 64 channels, but data\.caption_channels is 4096"):
        FeatureDataset(root, 32, max_length, caption_channels=4096)
    with pytest.raises(ValueError, match=r"cannot batch 'y': items \(index, shape\) differ"):
        collate([{"y": torch.zeros(1, 4, 8), "index": 0}, {"y": torch.zeros(1, 4, 16), "index": 1}])


def test_empty_dataset_is_an_error_that_says_so(root, max_length):
    shutil.rmtree(root / "vae_features_32")
    with pytest.raises(ValueError, match=rf"(?s)no usable items.*0 items, {NUM_IMAGES} skipped.*missing feature file"):
        FeatureDataset(root, 32, max_length)
    from diffusion.engine.data_loop import BatchStream

    with pytest.raises(RuntimeError, match="the dataset is empty"):
        next(iter(BatchStream([], [], collate, num_workers=0, seed=0)))
    with pytest.raises(RuntimeError, match=r"3 item\(s\) do not fill one batch"):
        next(iter(BatchStream([0, 1, 2], torch.utils.data.BatchSampler(range(3), 4, True), collate, 0, 0)))


def test_colliding_names_are_refused(root, max_length):
    entries = json.loads((root / "data_info.json").read_text())
    entries.append(dict(entries[0], path=entries[0]["path"].replace(".png", ".jpg")))
    (root / "data_info.json").write_text(json.dumps(entries))
    with pytest.raises(ValueError, match=r"images/00000\.png' and item 24 'images/00000\.jpg'"):
        FeatureDataset(root, 32, max_length)
