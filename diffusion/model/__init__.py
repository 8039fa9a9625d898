"""PixArt-alpha / PixArt-Sigma transformer (PixArt / PixArtMS), its building blocks, its named sizes, and
PixArt-delta's ControlNet wrappers."""

from diffusion.model.controlnet import PixArtControlNet, PixArtControlNetUNet
from diffusion.model.pixart import PixArt, PixArtMS
from diffusion.model.sizes import (
    PixArt_tiny,
    PixArt_XL_2,
    PixArtMS_tiny,
    PixArtMS_XL_2,
    PixArtSigma_XL_2,
    PixArtSigmaMS_XL_2,
)

__all__ = [
    "PixArt",
    "PixArtMS",
    "PixArt_XL_2",
    "PixArtMS_XL_2",
    "PixArtSigma_XL_2",
    "PixArtSigmaMS_XL_2",
    "PixArt_tiny",
    "PixArtMS_tiny",
    "PixArtControlNet",
    "PixArtControlNetUNet",
]
