"""Reading user images the way a person looking at them expects (PixArt-α §2.4 data path, before feature caching).

Photographs from phones and the web come in many shapes: EXIF-rotated JPEGs, 16-bit PNGs, RGBA/LA/palette images
with transparency, CMYK scans, grayscale. ``open_rgb`` turns each into the 8-bit RGB picture an image viewer shows:

- EXIF orientation applied (``ImageOps.exif_transpose``), so a portrait phone photo stays portrait;
- 16-bit (``I;16*``/``I``) grayscale rescaled 65535 → 255 (Pillow's own ``convert("RGB")`` clips it to white);
- transparency (RGBA, LA, PA, or a palette/L/RGB ``transparency`` entry) composited over a white background
  (dropping alpha would show whatever colour the transparent pixels happen to store, often black);
- every other mode (CMYK, P, L, 1, YCbCr, ...) through Pillow's conversion.

``oriented_size`` reads only the header and gives the (h, w) after orientation, for checking data_info.json.
``load_pixels`` / ``load_image`` then resize and centre-crop to a training size, the one way feature extraction and
the shard dataset read an image.
"""

from pathlib import Path
from typing import BinaryIO

import numpy as np
import torch
from PIL import Image, ImageOps

RATIO_TOLERANCE = 0.02  # relative h/w difference between a declared size and the image; rounding of a resized copy

BACKGROUND = (255, 255, 255)
_SWAPPING_ORIENTATIONS = {5, 6, 7, 8}  # EXIF orientations that rotate by 90° (transpose, rotate 270, ...)
_EXIF_ORIENTATION = 0x0112
RATIO_TOLERANCE = 0.02  # relative h/w difference between data_info.json and the image; rounding of a resized copy


def oriented_size(path: str | Path) -> tuple[int, int]:
    """(height, width) of the image at ``path`` as displayed, i.e. after its EXIF orientation."""
    with Image.open(path) as img:
        width, height = img.size
        if img.getexif().get(_EXIF_ORIENTATION) in _SWAPPING_ORIENTATIONS:
            width, height = height, width
    return height, width


def _has_transparency(img: Image.Image) -> bool:
    return img.mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in img.info


def to_rgb(img: Image.Image, background: tuple[int, int, int] = BACKGROUND) -> Image.Image:
    """An already oriented image of any mode → 8-bit RGB (see the module docstring for the rules)."""
    if img.mode in ("I;16", "I;16L", "I;16B", "I;16N", "I"):
        # 16-bit grayscale: Pillow keeps 0..65535 in these modes; scale to 0..255 before dropping to 8 bits.
        array = np.asarray(img, dtype=np.float64)
        img = Image.fromarray(np.clip(np.round(array / 257.0), 0, 255).astype(np.uint8), mode="L")
    if _has_transparency(img):
        rgba = img.convert("RGBA")
        canvas = Image.new("RGBA", rgba.size, background + (255,))
        return Image.alpha_composite(canvas, rgba).convert("RGB")
    return img.convert("RGB")


def open_rgb(path: str | Path | BinaryIO, background: tuple[int, int, int] = BACKGROUND) -> Image.Image:
    """Decode the image at ``path`` (or in a binary file object) fully (a truncated file raises here) as oriented
    8-bit RGB."""
    with Image.open(path) as img:
        img.load()
        oriented = ImageOps.exif_transpose(img)
        return to_rgb(oriented, background)


def load_pixels(
    source: str | Path | BinaryIO,
    size: tuple[int, int],
    declared: tuple[int, int] | None = None,
    declared_by: str = "data_info.json",
) -> np.ndarray:
    """Read an image (a path or a file object) as displayed (EXIF-oriented RGB, see images.py), resize it (bicubic)
    to cover ``size`` = (h, w) and centre-crop: (h, w, 3) uint8.

    ``declared`` (h, w), from ``declared_by`` (data_info.json, a shard's json), must have the oriented image's aspect
    ratio (within ``RATIO_TOLERANCE``): a resized copy of the original is fine (the official lists give original
    sizes, which stay the ``img_hw`` micro-condition), a swapped or wrong size that would pick another bucket is
    refused (ValueError)."""
    img = open_rgb(source)
    if declared is not None and abs(declared[0] / declared[1] * img.width / img.height - 1) > RATIO_TOLERANCE:
        raise ValueError(
            f"{declared_by} declares height {declared[0]}, width {declared[1]}, but the image is "
            f"{img.height}x{img.width} (h x w) after EXIF orientation; fix the entry (tools/make_data_info.py "
            "reads real sizes)"
        )
    h, w = size
    if (img.height, img.width) != (h, w):
        scale = max(h / img.height, w / img.width)
        new_w, new_h = max(w, round(img.width * scale)), max(h, round(img.height * scale))
        img = img.resize((new_w, new_h), Image.BICUBIC)
        left, top = (new_w - w) // 2, (new_h - h) // 2
        img = img.crop((left, top, left + w, top + h))
    return np.array(img, dtype=np.uint8)  # a writable copy (torch.from_numpy warns on a read-only view)


def pixels_to_model(pixels: torch.Tensor) -> torch.Tensor:
    """uint8 images (..., 3, h, w) → float32 in [-1, 1], what the codecs encode (exactly :func:`load_image`'s)."""
    return pixels.float() / 127.5 - 1.0


def load_image(path: str | Path, size: tuple[int, int], declared: tuple[int, int] | None = None) -> torch.Tensor:
    """:func:`load_pixels` as (3, h, w) float32 in [-1, 1], what the codecs encode."""
    return pixels_to_model(torch.from_numpy(load_pixels(path, size, declared)).permute(2, 0, 1))
