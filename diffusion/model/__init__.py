"""PixArt-alpha transformer (PixArt / PixArtMS), its building blocks, and PixArt-delta's ControlNet wrappers."""

from diffusion.model.controlnet import PixArtControlNet, PixArtControlNetUNet
from diffusion.model.pixart import PixArt, PixArt_tiny, PixArt_XL_2, PixArtMS, PixArtMS_tiny, PixArtMS_XL_2

__all__ = [
    "PixArt",
    "PixArtMS",
    "PixArt_XL_2",
    "PixArtMS_XL_2",
    "PixArt_tiny",
    "PixArtMS_tiny",
    "PixArtControlNet",
    "PixArtControlNetUNet",
]
