"""Sample grids written during training (the qualitative progress of PixArt-δ Fig. 8 / Fig. 12 style snapshots)."""

import math
import os
from pathlib import Path

import torch
from PIL import Image


def make_grid(images: torch.Tensor, columns: int | None = None) -> torch.Tensor:
    """Tile uint8 images (N, 3, H, W) into one uint8 image (3, rows*H, columns*W); columns default to ⌈√N⌉."""
    n, c, h, w = images.shape
    columns = columns or math.ceil(math.sqrt(n))
    rows = math.ceil(n / columns)
    grid = torch.zeros(c, rows * h, columns * w, dtype=torch.uint8)
    for i, image in enumerate(images.to("cpu", torch.uint8)):
        r, col = divmod(i, columns)
        grid[:, r * h : (r + 1) * h, col * w : (col + 1) * w] = image
    return grid


def save_grid(images: torch.Tensor, path: str | os.PathLike, columns: int | None = None) -> Path:
    """Save uint8 images (N, 3, H, W) as one PNG grid at ``path`` (parents created); returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(make_grid(images, columns).permute(1, 2, 0).numpy()).save(path)
    return path
