"""The app's size choices for PixArt-Sigma: a multi-scale Σ model (no micro-conditions) offers the resolution-binning
buckets as an α PixArtMS does (the 40 of ASPECT_RATIO_2048 at 2K, 33 at 1024); the 256 px Σ (PixArt) one size."""

import types

import torch

from diffusion.app.core import size_choices
from diffusion.model import PixArtSigma_XL_2, PixArtSigmaMS_XL_2
from diffusion.pipeline import Pipeline

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
