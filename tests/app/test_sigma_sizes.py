"""The app on PixArt-Sigma: a multi-scale Σ model (no micro-conditions) offers the resolution-binning buckets as an α
PixArtMS does (the 40 of ASPECT_RATIO_2048 at 2K, 33 at 1024; the 256 px Σ (PixArt) one size), and a tiny Σ config
(300 tokens, KV compression) loads and samples a non-square bucket."""

import types
from pathlib import Path

import torch
from mmengine.config import Config
from safetensors.torch import save_file

from diffusion.app.core import load_models, size_choices, text_to_image
from diffusion.data import ensure_tiny_text_encoder
from diffusion.model import PixArtSigma_XL_2, PixArtSigmaMS_XL_2
from diffusion.pipeline import Pipeline
from diffusion.registry import MODELS
from tests.model.helpers import randomize

SDXL_VAE = types.SimpleNamespace(downsample=8, scale_factor=0.13025)  # the codec's geometry is all size_choices reads


def _pipe(model, resolution: int) -> Pipeline:
    return Pipeline(model, text_encoder=None, codec=SDXL_VAE, resolution=resolution)


def test_sigma_sizes_follow_the_binning_tables():
    with torch.device("meta"):  # the architecture only
        models = [
            PixArtSigmaMS_XL_2(input_size=256, pe_interpolation=4.0),
            PixArtSigmaMS_XL_2(input_size=128, pe_interpolation=2.0),
            PixArtSigma_XL_2(input_size=32, pe_interpolation=0.5),
        ]
    two_k, one_k, square = (size_choices(_pipe(m, r), r) for m, r in zip(models, (2048, 1024, 256)))
    assert len(two_k) == 40 and next(iter(two_k.values())) == (2048, 2048)
    assert two_k["1408×2816 (h/w 0.5)"] == (1408, 2816) and "4096×1024 (h/w 4.0)" in two_k
    assert len(one_k) == 33 and "1856×512 (h/w 3.62)" not in one_k  # diffusers' ASPECT_RATIO_1024_BIN
    assert square == {"256×256": (256, 256)}


BASES = Path(__file__).resolve().parents[2] / "configs" / "_base_"


def test_the_app_serves_a_tiny_sigma_config(tmp_path):
    te_dir = ensure_tiny_text_encoder(tmp_path / "t5")
    config = tmp_path / "sigma.py"
    config.write_text(
        f"_base_ = ['{BASES}/models/tiny.py', '{BASES}/datasets/embedded_32.py', '{BASES}/methods/diffusion.py']\n"
        "model = dict(type='PixArtMS_tiny', hidden_size=40, num_heads=2, depth=2, model_max_length=300,\n"
        "             micro_condition=False,\n"
        "             kv_compress_config=dict(sampling='conv', scale_factor=2, kv_compress_layer=[1]))\n"
        "data = dict(max_length=300)\n"
        f"text_encoder = dict(path='{te_dir}', max_length=300, clean_caption=False)\n"
    )
    model = randomize(MODELS.build(dict(Config.fromfile(str(config)).model)), std=0.05)
    save_file(model.state_dict(), str(tmp_path / "teacher.safetensors"))
    models = load_models(str(config), {"teacher": str(tmp_path / "teacher.safetensors")})
    assert models.multiscale and models.teacher.text_encoder.max_length == 300
    size = "24×40 (h/w 0.6)"
    result = text_to_image(models, "a red circle", "dpm", 2, 4.5, 0, 1, size)
    assert result.images[0].shape == (24, 40, 3) and result.nfe == 4
