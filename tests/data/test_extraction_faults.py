"""Extraction faults from issue 10 / 9: name collisions, empty size groups, stale caches, --strict, rank-0 meta,
separate T5/VAE batch sizes, the VAE's own scaling factor."""

import json

import numpy as np
import pytest
from PIL import Image

from diffusion.data import AutoencoderKLCodec, PixelCodec, TextEncoder, extract_features
from diffusion.data.codec import make_tiny_vae
from tests.commands import load_command

MAX_LENGTH = 8


@pytest.fixture()
def encoder(tiny_text_encoder_dir):
    return TextEncoder.from_pretrained(tiny_text_encoder_dir, max_length=MAX_LENGTH)


def _folder(root, paths, size=(32, 32)):
    entries = []
    for i, path in enumerate(paths):
        (root / path).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.full((*size, 3), 20 * i, np.uint8)).save(root / path, format="PNG")
        entries.append({"path": path, "prompt": f"a red circle {i}", "height": size[0], "width": size[1]})
    (root / "data_info.json").write_text(json.dumps(entries))
    return root


@pytest.mark.parametrize("pair", [("photo.jpg", "photo.png"), ("a/b_c.png", "a_b/c.png")])
def test_colliding_feature_names_are_refused_naming_both(tmp_path, encoder, pair):
    _folder(tmp_path, ["other.png", *pair])
    with pytest.raises(ValueError, match=rf"item 1 '{pair[0]}' and item 2 '{pair[1]}'"):
        extract_features(tmp_path, encoder, PixelCodec(), 32, progress=False)
    assert not (tmp_path / "caption_features").exists() or not list((tmp_path / "caption_features").glob("*.npz"))


def test_a_batch_of_only_unreadable_images_does_not_crash(tmp_path, encoder):
    _folder(tmp_path, [f"{i}.png" for i in range(4)])
    for bad in ("2.png", "3.png"):  # with vae_batch_size 2 the second batch has no readable image
        (tmp_path / bad).write_bytes(b"not an image")
    report = extract_features(tmp_path, encoder, PixelCodec(), 32, vae_batch_size=2, progress=False)
    assert report.latents == 2 and len(report.bad) == 2
    again = extract_features(tmp_path, encoder, PixelCodec(), 32, vae_batch_size=2, progress=False)
    assert (again.captions, again.latents, len(again.bad)) == (0, 0, 2)  # the bad ones are retried and re-listed


def test_declared_size_swap_is_refused_and_listed(tmp_path, encoder):
    _folder(tmp_path, ["a.png", "b.png"], size=(16, 32))
    entries = json.loads((tmp_path / "data_info.json").read_text())
    entries[1]["height"], entries[1]["width"] = 32, 16  # swapped: would go to a portrait bucket
    (tmp_path / "data_info.json").write_text(json.dumps(entries))
    report = extract_features(tmp_path, encoder, PixelCodec(), 32, multi_scale=True, progress=False)
    assert report.latents == 1 and [p.rsplit("/", 1)[-1] for p, _ in report.bad] == ["b.png"]
    assert "declares height 32, width 16" in report.bad[0][1]


def test_stale_caches_are_refused_and_redone(tmp_path, encoder, tiny_text_encoder_dir):
    _folder(tmp_path, ["a.png", "b.png"])
    extract_features(tmp_path, encoder, PixelCodec(), 32, progress=False)
    longer = TextEncoder.from_pretrained(tiny_text_encoder_dir, max_length=MAX_LENGTH + 4)
    with pytest.raises(ValueError, match=r"(?s)caption_features.*max_length: cache has 8, this run has 12.*--redo"):
        extract_features(tmp_path, longer, PixelCodec(), 32, progress=False)
    with pytest.raises(ValueError, match=r"(?s)vae_features_32.*scale_factor: cache has 1.0, this run has 0.5"):
        extract_features(tmp_path, encoder, PixelCodec(scale_factor=0.5), 32, progress=False)
    latent = tmp_path / "vae_features_32" / "a.npy"
    latent_mtime = latent.stat().st_mtime_ns
    report = extract_features(tmp_path, longer, PixelCodec(), 32, progress=False, redo=True)
    # only the stale cache (the captions) is redone; the image latents match their producer and stay
    assert (report.captions, report.latents, report.existing) == (2, 0, 2)
    assert latent.stat().st_mtime_ns == latent_mtime
    report = extract_features(tmp_path, longer, PixelCodec(), 32, progress=False, redo="all")
    assert (report.captions, report.latents, report.existing) == (2, 2, 0)
    with pytest.raises(ValueError, match="redo"):
        extract_features(tmp_path, longer, PixelCodec(), 32, progress=False, redo="everything")
    with np.load(tmp_path / "caption_features" / "a.npz") as npz:
        assert npz["caption_feature"].shape == (1, MAX_LENGTH + 4, 64)
    assert json.loads((tmp_path / "caption_features" / "meta.json").read_text())["max_length"] == MAX_LENGTH + 4


def test_another_vae_is_a_stale_cache(tmp_path, encoder):
    _folder(tmp_path / "data", ["a.png"], size=(16, 16))
    vaes = [
        AutoencoderKLCodec(make_tiny_vae(tmp_path / f"vae{seed}", seed=seed, scaling_factor=0.13025))
        for seed in (0, 1)
    ]
    assert vaes[0].scale_factor == 0.13025  # the VAE's own config.scaling_factor, not SD's 0.18215
    assert AutoencoderKLCodec(tmp_path / "vae0", scale_factor=0.5).scale_factor == 0.5
    extract_features(tmp_path / "data", encoder, vaes[0], 16, progress=False)
    meta = json.loads((tmp_path / "data" / "vae_features_16" / "meta.json").read_text())
    assert meta["vae"] == str(tmp_path / "vae0") and meta["scale_factor"] == 0.13025
    assert meta["vae_config"]["latent_channels"] == 4
    with pytest.raises(ValueError, match=r"(?s)vae:.*vae0.*vae1.*vae_fingerprint"):
        extract_features(tmp_path / "data", encoder, vaes[1], 16, progress=False)


def test_only_rank_0_writes_meta(tmp_path, encoder):
    _folder(tmp_path, ["a.png", "b.png"])
    extract_features(tmp_path, encoder, PixelCodec(), 32, rank=1, world_size=2, progress=False)
    assert not (tmp_path / "caption_features" / "meta.json").exists()
    assert not (tmp_path / "vae_features_32" / "meta.json").exists()
    extract_features(tmp_path, encoder, PixelCodec(), 32, rank=0, world_size=2, progress=False)
    assert (tmp_path / "vae_features_32" / "meta.json").is_file()
    assert not list(tmp_path.rglob("*.tmp"))


class _Spy:
    """Records the batch size of every call to ``encode`` of the wrapped object."""

    def __init__(self, inner):
        self.inner, self.calls = inner, []

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def encode(self, x):
        self.calls.append(len(x))
        return self.inner.encode(x)


def test_text_and_vae_batch_sizes_are_separate(tmp_path, encoder):
    _folder(tmp_path, [f"{i}.png" for i in range(7)])
    t5, codec = _Spy(encoder), _Spy(PixelCodec())
    extract_features(tmp_path, t5, codec, 32, text_batch_size=5, vae_batch_size=3, progress=False)
    assert t5.calls == [5, 2] and codec.calls == [3, 3, 1]


def test_cli_strict_and_skipped_list(tmp_path, tiny_text_encoder_dir, capsys):
    command = load_command("tools/extract_features.py")
    main, parse_args = command.main, command.parse_args

    _folder(tmp_path, ["a.png", "b.png", "c.png"])
    (tmp_path / "b.png").write_bytes(b"broken")
    args = ["--data-root", str(tmp_path), "--text-encoder", str(tiny_text_encoder_dir), "--codec", "pixel"]
    args += ["--resolution", "32", "--max-length", str(MAX_LENGTH), "--device", "cpu"]
    assert main(args) == 0
    out = capsys.readouterr()
    assert "1 bad image(s)" in out.out and "bad: " + str(tmp_path / "b.png") in out.out and "--strict" in out.err
    assert main(args + ["--strict"]) == 1
    assert "bad: " + str(tmp_path / "b.png") in capsys.readouterr().out
    assert parse_args(args[:-2] + ["--device", "cuda"]).text_dtype == "bf16"  # T5 in bf16 on GPU by default
    assert parse_args(args).text_dtype == "fp32"
    assert parse_args(args + ["--no-clean-caption"]).clean_caption is False
    main(args + ["--scale-factor", "0.25", "--redo"])
    assert json.loads((tmp_path / "vae_features_32" / "meta.json").read_text())["scale_factor"] == 0.25


def test_the_same_model_under_another_path_is_not_stale(tmp_path, encoder, tiny_text_encoder_dir):
    import shutil

    _folder(tmp_path / "data", ["a.png"])
    extract_features(tmp_path / "data", encoder, PixelCodec(), 32, progress=False)
    copy = shutil.copytree(tiny_text_encoder_dir, tmp_path / "elsewhere" / "t5")
    moved = TextEncoder.from_pretrained(copy, max_length=MAX_LENGTH)
    assert extract_features(tmp_path / "data", moved, PixelCodec(), 32, progress=False).existing == 2
