"""Bring your own images, end to end as docs/data.md tells a new user: make_data_info -> extract_features ->
train -> sample, on a folder of awkward "photos" (EXIF-rotated, 16-bit, RGBA, CMYK, palette, grayscale, very wide
and very tall, nested folders, spaces in names, one truncated, one without caption), with a tiny random local
AutoencoderKL and the tiny T5."""

import io
import json
from pathlib import Path

import numpy as np
from PIL import Image

from diffusion.data.codec import make_tiny_vae
from tests.commands import load_command

REPO = Path(__file__).resolve().parents[2]


def _photo(h, w, seed):
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[:h, :w]
    base = np.stack([x * 255 // max(w - 1, 1), y * 255 // max(h - 1, 1), np.full((h, w), 90)], -1)
    return np.clip(base + rng.integers(-20, 20, (h, w, 3)), 0, 255).astype(np.uint8)


def make_photo_folder(root: Path) -> dict[str, tuple[int, int]]:
    """Write the awkward photo folder; returns {relative path: displayed (h, w)} of the captioned, readable ones."""
    sizes = {}

    def save(rel, img, caption="a photo of something", size=None, **kwargs):
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        img.save(path, **kwargs)
        if caption:
            path.with_suffix(".txt").write_text(caption)
            sizes[rel] = size or (img.height, img.width)

    exif = Image.Exif()
    exif[0x0112] = 6  # stored landscape, displayed portrait
    save("beach trip/IMG 0001.jpg", Image.fromarray(_photo(48, 96, 0)), size=(96, 48), exif=exif.tobytes())
    save("scans/gray scan.png", Image.fromarray(_photo(64, 64, 1)[..., 0]))
    save("scans/deep 16bit.png", Image.fromarray(_photo(64, 80, 2)[..., 0].astype(np.uint16) * 257))
    rgba = np.concatenate([_photo(64, 64, 3), np.full((64, 64, 1), 128, np.uint8)], -1)
    save("logos/logo rgba.png", Image.fromarray(rgba, "RGBA"))
    save("print/cmyk.jpg", Image.fromarray(_photo(72, 64, 4)).convert("CMYK"))
    save("palette.gif", Image.fromarray(_photo(64, 64, 5)).convert("P"))
    save("panorama/wide.png", Image.fromarray(_photo(24, 128, 6)))
    save("tall.png", Image.fromarray(_photo(128, 30, 7)))
    save("a/b/c d/nested photo.png", Image.fromarray(_photo(64, 96, 8)))
    save("no caption.png", Image.fromarray(_photo(64, 64, 9)), caption=None)
    buffer = io.BytesIO()
    Image.fromarray(_photo(64, 64, 10)).save(buffer, "JPEG")
    (root / "broken").mkdir()
    (root / "broken/cut.jpg").write_bytes(buffer.getvalue()[: len(buffer.getvalue()) // 2])
    (root / "broken/cut.txt").write_text("a truncated photo")
    return sizes


def test_own_images_end_to_end(tmp_path, tiny_text_encoder_dir, capsys):
    extract = load_command("tools/extract_features.py").main
    make_data_info = load_command("tools/make_data_info.py").main
    sample = load_command("tools/sample.py").main
    train = load_command("train_scripts/train.py").main

    photos = tmp_path / "my photos"
    sizes = make_photo_folder(photos)
    assert make_data_info([str(photos)]) == 0
    out = capsys.readouterr().out
    assert "skipped: no caption.png: no caption" in out
    items = {item["path"]: item for item in json.loads((photos / "data_info.json").read_text())}
    assert set(items) == set(sizes) | {"broken/cut.jpg"}  # the header of a truncated JPEG still reads
    for rel, (h, w) in sizes.items():
        assert (items[rel]["height"], items[rel]["width"]) == (h, w), rel

    vae = make_tiny_vae(tmp_path / "tiny vae")
    args = ["--data-root", str(photos), "--text-encoder", str(tiny_text_encoder_dir), "--codec", "vae"]
    args += ["--vae", str(vae), "--resolution", "64", "--multi-scale", "--max-length", "32", "--device", "cpu"]
    assert extract(args + ["--strict"]) == 1  # the truncated photo is skipped, so --strict fails ...
    out = capsys.readouterr().out
    assert f"bad: {photos / 'broken/cut.jpg'}: OSError" in out and "1 bad image(s)" in out
    assert extract(args) == 0  # ... and without it the rest is usable
    latent = np.load(photos / "vae_features_64_ms" / "beach trip_IMG 0001.npy")
    assert latent.shape[1] > latent.shape[2]  # the EXIF-rotated phone photo went to a portrait bucket
    assert np.load(photos / "vae_features_64_ms" / "panorama_wide.npy").shape == (8, 16, 64)  # bucket 32x128 / 2

    config = tmp_path / "my_config.py"
    config.write_text(
        f"_base_ = [{str(REPO / 'configs/pixart/tiny_own_images.py')!r}]\n"
        f"data = dict(root={str(photos)!r})\n"
        f"codec = dict(path={str(vae)!r})\n"
        f"text_encoder = dict(path={str(tiny_text_encoder_dir)!r})\n"
        "train = dict(max_steps=2, batch_size=1)\n"
        "checkpoint = dict(every=2)\nlog = dict(every=1, wandb_project=None)\n"
        "validation = dict(every=1000, prompts=['a photo'], sampler=dict(_delete_=True, name='dpm', steps=2))\n"
    )
    work_dir = tmp_path / "run"
    train([str(config), "--work-dir", str(work_dir)])
    checkpoint = work_dir / "checkpoints" / "step_0000002"
    written = sample(["--config", str(config), "--checkpoint", str(checkpoint), "--prompts", "a photo of a dog"]
                     + ["--steps", "2", "--out", str(tmp_path / "samples"), "--device", "cpu"])  # fmt: skip
    grid = Image.open(written[-1])
    assert grid.size[0] >= 64 and np.asarray(grid).std() > 0
