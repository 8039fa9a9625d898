"""Extraction reruns re-extract items whose source changed (an edited caption, a replaced image), and the dataset
refuses a caption cache whose recorded prompt differs from data_info.json (sources.py)."""

import json
import os

import numpy as np
import pytest
from PIL import Image

from diffusion.data import FeatureDataset, PixelCodec, TextEncoder, extract_features

MAX_LENGTH = 8


@pytest.fixture()
def encoder(tiny_text_encoder_dir):
    return TextEncoder.from_pretrained(tiny_text_encoder_dir, max_length=MAX_LENGTH)


def _image(path, size, value):
    Image.fromarray(np.full((*size, 3), value, np.uint8)).save(path, format="PNG")


@pytest.fixture()
def folder(tmp_path):
    entries = []
    for i in range(4):
        _image(tmp_path / f"{i}.png", (32, 32), 40 * i)
        _image(tmp_path / f"{i}_edge.png", (32, 32), 255 - 40 * i)
        entries.append({"path": f"{i}.png", "control_path": f"{i}_edge.png", "prompt": f"a red circle {i}"})
        entries[-1] |= {"height": 32, "width": 32}
    (tmp_path / "data_info.json").write_text(json.dumps(entries))
    return tmp_path


def _edit(folder, index, **changes):
    entries = json.loads((folder / "data_info.json").read_text())
    entries[index] |= changes
    (folder / "data_info.json").write_text(json.dumps(entries))


def _run(folder, encoder, **kw):
    return extract_features(folder, encoder, PixelCodec(), 32, progress=False, **kw)


def test_an_edited_caption_is_re_extracted(folder, encoder):
    _run(folder, encoder)
    before = np.load(folder / "caption_features" / "1.npz")["attention_mask"].sum()
    _edit(folder, 1, prompt="a blue square")
    report = _run(folder, encoder)
    assert (report.captions, report.latents, report.changed, report.unverified) == (1, 0, 1, 0)
    assert "1 redone because their source changed" in report.summary()
    assert np.load(folder / "caption_features" / "1.npz")["attention_mask"].sum() == before - 1
    assert (_run(folder, encoder).captions, _run(folder, encoder).changed) == (0, 0)


def test_a_replaced_image_is_re_extracted_even_at_the_same_size(folder, encoder):
    _run(folder, encoder, control=True)
    old = np.load(folder / "vae_features_32" / "2.npy")
    _image(folder / "2.png", (32, 32), 7)
    _image(folder / "3_edge.png", (32, 32), 9)
    report = _run(folder, encoder, control=True)
    assert (report.captions, report.latents, report.controls, report.changed) == (0, 1, 1, 2)
    assert not np.array_equal(np.load(folder / "vae_features_32" / "2.npy"), old)


def test_a_replaced_image_of_another_aspect_ratio_gets_its_new_bucket(folder, encoder):
    _run(folder, encoder, multi_scale=True)
    _image(folder / "0.png", (16, 64), 50)
    _edit(folder, 0, height=16, width=64)  # tools/make_data_info.py rerun
    report = _run(folder, encoder, multi_scale=True)
    assert (report.latents, report.changed) == (1, 1)
    assert np.load(folder / "vae_features_32_ms" / "0.npy").shape == (24, 8, 32)
    dataset = FeatureDataset(folder, 32, MAX_LENGTH, multi_scale=True)
    assert dataset[0]["vae_feat"].shape == (24, 8, 32)


def test_caches_from_before_the_index_are_trusted_and_counted_unverified(folder, encoder):
    _run(folder, encoder)
    for index in folder.rglob("sources*.json"):
        index.unlink()
    _edit(folder, 0, prompt="an edited caption")
    report = _run(folder, encoder)
    assert (report.captions, report.latents, report.existing, report.unverified) == (0, 0, 8, 8)
    assert "8 unverified" in report.summary()
    FeatureDataset(folder, 32, MAX_LENGTH)  # nothing recorded: nothing to compare


def test_sharded_ranks_write_their_own_index_and_redo_their_share(folder, encoder):
    for rank in (0, 1):
        _run(folder, encoder, rank=rank, world_size=2)
    assert sorted(p.name for p in (folder / "caption_features").glob("sources*.json")) == [
        "sources.rank0.json",
        "sources.rank1.json",
    ]
    from diffusion.data.sources import SourceIndex

    assert len(SourceIndex(folder / "caption_features", rank=0).recorded) == 4  # the ranks' files merged
    _edit(folder, 3, prompt="a changed caption")  # item 3 is rank 1's
    assert _run(folder, encoder, rank=0, world_size=2).changed == 0
    assert _run(folder, encoder, rank=1, world_size=2).changed == 1
    _edit(folder, 2, prompt="another changed caption")  # item 2: rank 0 of 2, now rank 0 of 1
    assert _run(folder, encoder).changed == 1
    FeatureDataset(folder, 32, MAX_LENGTH)


def test_an_interrupted_run_resumes_and_records_what_it_wrote(folder, encoder):
    _run(folder, encoder)
    (folder / "vae_features_32" / "1.npy").unlink()
    os.utime(folder / "3.png")  # touched: a new mtime counts as a new source
    report = _run(folder, encoder)
    assert (report.latents, report.changed, report.existing) == (2, 1, 6)


def test_the_dataset_refuses_a_caption_edited_after_extraction(folder, encoder):
    _run(folder, encoder)
    _edit(folder, 2, prompt="a caption nobody extracted")
    with pytest.raises(ValueError, match=r"(?s)caption_features/2\.npz.*prompt.*data_info\.json.*extract_features"):
        FeatureDataset(folder, 32, MAX_LENGTH)
