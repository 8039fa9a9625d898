"""Control latents of annotated images (extract_features with an annotator): the codec of the annotator's control
image of each item's own image, recorded in meta.json, resumable, and refused when made by another annotator."""

import json
import shutil

import cv2
import numpy as np
import pytest
import torch
from PIL import Image

from diffusion.data import AutoencoderKLCodec, PixelCodec, TextEncoder, extract_features, feature_name, make_tiny_vae
from diffusion.data.annotators import CannyAnnotator, HEDAnnotator, to_control_image
from diffusion.data.embedded import make_embedded_data
from diffusion.data.features import latent_dir
from diffusion.data.images import load_image
from tests.data.helpers import write_random_hed

MAX_LENGTH = 66
N = 4


@pytest.fixture()
def encoder(tiny_text_encoder_dir):
    return TextEncoder.from_pretrained(tiny_text_encoder_dir, max_length=MAX_LENGTH)


@pytest.fixture()
def folder(tmp_path):
    """N embedded images whose items have no control_path: an annotator needs only the image."""
    make_embedded_data(tmp_path / "data", num=N, seed=0)
    info = tmp_path / "data" / "data_info.json"
    info.write_text(
        json.dumps([{k: v for k, v in e.items() if k != "control_path"} for e in json.loads(info.read_text())])
    )
    return tmp_path / "data"


def _extract(folder, encoder, codec, annotator, **kwargs):
    return extract_features(
        folder, encoder, codec, 32, control=True, annotator=annotator, vae_batch_size=3, progress=False, **kwargs
    )


def _control(folder, entry):
    return np.load(latent_dir(folder, 32, control=True) / f"{feature_name(entry['path'])}.npy")


def _entries(folder):
    return json.loads((folder / "data_info.json").read_text())


class CountingCanny(CannyAnnotator):
    def __init__(self, *args):
        super().__init__(*args)
        self.images = 0

    def forward(self, images):
        self.images += len(images)
        return super().forward(images)


def test_canny_latents_are_the_codec_of_the_canny_control_image(folder, encoder, tmp_path):
    codec = AutoencoderKLCodec(make_tiny_vae(tmp_path / "vae"))
    canny = CannyAnnotator(50, 150)
    report = _extract(folder, encoder, codec, canny)
    assert (report.latents, report.controls, report.bad) == (N, N, [])
    edges = []
    for entry in _entries(folder):
        image = load_image(folder / entry["path"], (32, 32))[None]
        control = to_control_image(canny((image + 1) / 2)).float() / 127.5 - 1
        edges.append((control > 0).float().mean())
        mean, std = codec.encode(control)
        np.testing.assert_allclose(_control(folder, entry), torch.cat([mean, std], 1)[0].numpy(), atol=1e-5)
    assert 0 < max(edges) < 0.5  # real edge maps (a green circle on grey has none at these thresholds)
    meta = json.loads((latent_dir(folder, 32, control=True) / "meta.json").read_text())
    assert meta == json.loads((latent_dir(folder, 32) / "meta.json").read_text()) | dict(
        annotator="canny", canny_low=50, canny_high=150, canny_l2_gradient=False
    )


def test_resume_annotates_only_missing_items_and_matches_opencv(folder, encoder):
    codec, canny = PixelCodec(), CountingCanny(100, 200)
    _extract(folder, encoder, codec, canny)
    entries = _entries(folder)
    for entry in entries:  # the lossless PixelCodec gives the edge picture back: OpenCV on the PNG, as +-1
        grey = cv2.cvtColor(np.asarray(Image.open(folder / entry["path"]).convert("RGB")), cv2.COLOR_RGB2GRAY)
        expected = np.repeat(cv2.Canny(grey, 100, 200)[None] / 127.5 - 1, 3, 0)
        decoded = codec.decode(torch.from_numpy(_control(folder, entry)[:12])[None])[0].numpy()
        np.testing.assert_allclose(decoded, expected, atol=1e-6)
    (latent_dir(folder, 32, control=True) / f"{feature_name(entries[2]['path'])}.npy").unlink()
    canny.images = 0
    again = _extract(folder, encoder, codec, canny)
    assert (again.captions, again.latents, again.controls, again.existing, canny.images) == (0, 0, 1, 3 * N - 1, 1)


def test_a_bad_image_is_listed_once_and_gets_no_control(folder, encoder):
    entries = _entries(folder)
    (folder / entries[1]["path"]).write_bytes(b"not a png")
    report = _extract(folder, encoder, PixelCodec(), CannyAnnotator())
    assert (report.latents, report.controls) == (N - 1, N - 1)
    assert [path for path, _ in report.bad] == [str(folder / entries[1]["path"])]
    assert not (latent_dir(folder, 32, control=True) / f"{feature_name(entries[1]['path'])}.npy").exists()


def test_another_annotator_is_refused_unless_redo(encoder, tmp_path):
    make_embedded_data(tmp_path, num=N, seed=0)  # with control_path: image mode first
    codec, meta = PixelCodec(), latent_dir(tmp_path, 32, control=True) / "meta.json"
    _extract(tmp_path, encoder, codec, None)
    assert json.loads(meta.read_text())["annotator"] == "image"
    with pytest.raises(ValueError, match="annotator: cache has 'image', this run has 'canny'"):
        _extract(tmp_path, encoder, codec, CannyAnnotator())
    assert _extract(tmp_path, encoder, codec, CannyAnnotator(), redo=True).controls == N
    with pytest.raises(ValueError, match="canny_low: cache has 100, this run has 50"):
        _extract(tmp_path, encoder, codec, CannyAnnotator(50, 200))
    assert _extract(tmp_path, encoder, codec, CannyAnnotator(50, 200), redo=True).controls == N
    assert json.loads(meta.read_text())["canny_low"] == 50


def test_a_cache_from_before_annotators_were_recorded_is_image_mode(encoder, tmp_path):
    make_embedded_data(tmp_path, num=N, seed=0)
    codec, meta = PixelCodec(), latent_dir(tmp_path, 32, control=True) / "meta.json"
    _extract(tmp_path, encoder, codec, None)
    meta.write_text(json.dumps({k: v for k, v in json.loads(meta.read_text()).items() if k != "annotator"}))
    assert _extract(tmp_path, encoder, codec, None).existing == 3 * N
    with pytest.raises(ValueError, match="annotator: cache has 'image'"):
        _extract(tmp_path, encoder, codec, CannyAnnotator())


def test_hed_latents_record_the_weights_and_survive_a_move(folder, encoder, tmp_path):
    write_random_hed(tmp_path / "ControlNetHED.pth")
    hed, codec = HEDAnnotator(tmp_path / "ControlNetHED.pth"), PixelCodec()
    assert _extract(folder, encoder, codec, hed).controls == N
    entry = _entries(folder)[0]
    image = load_image(folder / entry["path"], (32, 32))[None]
    expected = to_control_image(hed((image + 1) / 2)).float() / 127.5 - 1
    np.testing.assert_allclose(codec.decode(torch.from_numpy(_control(folder, entry)[:12])[None]), expected, atol=1e-6)
    meta = json.loads((latent_dir(folder, 32, control=True) / "meta.json").read_text())
    assert meta["annotator"] == "hed" and meta["hed"] == str(tmp_path / "ControlNetHED.pth")
    assert len(meta["hed_fingerprint"]) == 16
    moved = shutil.copy(tmp_path / "ControlNetHED.pth", tmp_path / "hed_copy.pth")  # same weights elsewhere: valid
    assert _extract(folder, encoder, codec, HEDAnnotator(moved)).existing == 3 * N
    write_random_hed(tmp_path / "other.pth", seed=1)
    with pytest.raises(ValueError, match="hed_fingerprint"):
        _extract(folder, encoder, codec, HEDAnnotator(tmp_path / "other.pth"))


def test_an_annotator_needs_control(folder, encoder):
    with pytest.raises(ValueError, match="control=True"):
        extract_features(folder, encoder, PixelCodec(), 32, annotator=CannyAnnotator(), progress=False)
