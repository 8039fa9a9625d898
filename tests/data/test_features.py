"""extract_features: cache files of the right shapes, resumable, sharded, multi-scale buckets, bad images counted."""

import json
import shutil

import numpy as np
import pytest
import torch
from PIL import Image

from diffusion.data import PixelCodec, TextEncoder, extract_features, feature_name
from diffusion.data.embedded import make_embedded_data
from diffusion.data.features import latent_dir
from diffusion.data.images import load_image
from tests.commands import load_command

MAX_LENGTH = 66


@pytest.fixture()
def encoder(tiny_text_encoder_dir):
    return TextEncoder.from_pretrained(tiny_text_encoder_dir, max_length=MAX_LENGTH)


@pytest.fixture()
def folder(tmp_path):
    make_embedded_data(tmp_path, num=10, seed=0)
    return tmp_path


def test_feature_name():
    assert feature_name("images/00001.png") == "images_00001"
    assert feature_name("a/b/c.jpg") == "a_b_c"


def test_files_have_official_layout_and_resume(folder, encoder):
    codec = PixelCodec(downsample=2)
    report = extract_features(
        folder, encoder, codec, 32, control=True, text_batch_size=4, vae_batch_size=4, progress=False
    )
    assert (report.captions, report.latents, report.controls, report.existing, report.bad) == (10, 10, 10, 0, [])
    entries = json.loads((folder / "data_info.json").read_text())
    for entry in entries:
        name = feature_name(entry["path"])
        with np.load(folder / "caption_features" / f"{name}.npz") as npz:
            assert npz["caption_feature"].shape == (1, MAX_LENGTH, encoder.caption_channels)
            assert npz["caption_feature"].dtype == np.float32
            assert npz["attention_mask"].shape == (1, MAX_LENGTH)
            assert npz["attention_mask"].sum() == len(entry["prompt"].split()) + 1
        latent = np.load(folder / "vae_features_32" / f"{name}.npy")
        assert latent.shape == (24, 16, 16) and latent.dtype == np.float32
        mean, std = latent[:12], latent[12:]
        assert (std == 0).all()
        image = load_image(folder / entry["path"], (32, 32))[None]
        np.testing.assert_array_equal(codec.decode(torch.from_numpy(mean)[None]), image)
        control = np.load(folder / "control_features_32" / f"{name}.npy")  # the control_path image as it is
        assert control.shape == (24, 16, 16)
        edges = load_image(folder / entry["control_path"], (32, 32))[None]
        np.testing.assert_array_equal(codec.decode(torch.from_numpy(control[:12])[None]), edges)
    meta = json.loads((latent_dir(folder, 32) / "meta.json").read_text())
    assert meta == dict(
        codec="PixelCodec", latent_channels=12, downsample=2, scale_factor=1.0, resolution=32, multi_scale=False
    )
    assert json.loads((latent_dir(folder, 32, control=True) / "meta.json").read_text()) == meta | {
        "annotator": "image"
    }
    caption_meta = json.loads((folder / "caption_features" / "meta.json").read_text())
    assert caption_meta["text_encoder"] == str(encoder.path) and len(caption_meta["fingerprint"]) == 16
    assert (caption_meta["max_length"], caption_meta["caption_channels"]) == (MAX_LENGTH, 64)
    assert caption_meta["clean_caption"] is True and caption_meta["dtype"] == "float32"

    victim = folder / "vae_features_32" / f"{feature_name(entries[3]['path'])}.npy"
    victim.unlink()
    mtime = (folder / "caption_features" / f"{feature_name(entries[0]['path'])}.npz").stat().st_mtime_ns
    again = extract_features(
        folder, encoder, codec, 32, control=True, text_batch_size=4, vae_batch_size=4, progress=False
    )
    assert (again.captions, again.latents, again.controls, again.existing) == (0, 1, 0, 29)
    assert victim.is_file()
    assert (folder / "caption_features" / f"{feature_name(entries[0]['path'])}.npz").stat().st_mtime_ns == mtime
    assert not list(folder.rglob("*.tmp"))


def test_bad_images_are_counted_and_skipped(folder, encoder):
    (folder / "images" / "00002.png").write_bytes(b"not a png")
    (folder / "images" / "00005.png").unlink()
    report = extract_features(folder, encoder, PixelCodec(), 32, text_batch_size=4, vae_batch_size=4, progress=False)
    assert report.latents == 8 and report.captions == 10
    assert sorted(path.rsplit("/", 1)[-1] for path, _ in report.bad) == ["00002.png", "00005.png"]
    assert "2 bad image(s)" in report.summary()
    assert not (folder / "vae_features_32" / "images_00002.npy").exists()


def test_ranks_are_disjoint_and_cover(folder, encoder):
    written = []
    for rank in range(3):
        before = set((folder / "caption_features").glob("*.npz")) if (folder / "caption_features").exists() else set()
        extract_features(folder, encoder, PixelCodec(), 32, rank=rank, world_size=3, progress=False)
        written.append(set((folder / "caption_features").glob("*.npz")) - before)
    assert [len(w) for w in written] == [4, 3, 3]
    assert len(set.union(*written)) == 10


def test_multi_scale_uses_buckets(tmp_path, encoder):
    sizes = [(32, 32), (16, 64), (48, 24)]  # (h, w): ratios 1, 0.25, 2
    entries = []
    for i, (h, w) in enumerate(sizes):
        Image.fromarray(np.full((h, w, 3), 40 * i, np.uint8)).save(tmp_path / f"{i}.png")
        entries.append({"path": f"{i}.png", "prompt": f"image {i}", "height": h, "width": w, "ratio": h / w})
    (tmp_path / "data_info.json").write_text(json.dumps(entries))
    report = extract_features(tmp_path, encoder, PixelCodec(), 32, multi_scale=True, progress=False)
    assert report.latents == 3
    shapes = [np.load(tmp_path / "vae_features_32_ms" / f"{i}.npy").shape for i in range(3)]
    assert shapes == [(24, 16, 16), (24, 8, 32), (24, 22, 11)]  # buckets 32x32, 16x64, 44x22 (key 2.0), /2


def test_missing_field_names_file_and_field(folder, encoder):
    entries = json.loads((folder / "data_info.json").read_text())
    del entries[4]["prompt"]
    (folder / "data_info.json").write_text(json.dumps(entries))
    with pytest.raises(ValueError, match=r"data_info\.json.*item 4.*prompt"):
        extract_features(folder, encoder, PixelCodec(), 32, progress=False)


def test_cli_runs_and_resumes(folder, tiny_text_encoder_dir, capsys):
    main = load_command("tools/extract_features.py").main

    args = ["--data-root", str(folder), "--text-encoder", str(tiny_text_encoder_dir), "--codec", "pixel"]
    args += ["--resolution", "32", "--max-length", str(MAX_LENGTH), "--control", "--device", "cpu"]
    assert main(args) == 0
    assert "wrote 10 caption, 10 latent, 10 control" in capsys.readouterr().out
    shutil.rmtree(folder / "control_features_32")
    assert main(args) == 0
    assert "wrote 0 caption, 0 latent, 10 control files; 20 already existed" in capsys.readouterr().out
