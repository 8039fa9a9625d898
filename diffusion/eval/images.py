"""Image folders for evaluation (PixArt-δ §5 compares samples by FID): listing, batched reading that skips and counts
unreadable files, and writing sample folders with their ``prompts.txt``."""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from diffusion.eval.manifest import PROMPTS_FILE, check_sample_folder

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")


@dataclass
class FolderReport:
    """What reading a folder found: ``read`` images used and the ``skipped`` files that could not be decoded."""

    read: int = 0
    skipped: list[str] = field(default_factory=list)

    def summary(self) -> str:
        names = ", ".join(self.skipped[:5]) + (" ..." if len(self.skipped) > 5 else "")
        return f"{self.read} images read, {len(self.skipped)} unreadable skipped" + (f" ({names})" if names else "")


def list_images(source: str | Path) -> list[Path]:
    """Image files of ``source``: a dataset root with ``data_info.json`` (its entries' ``path``, in order) or any
    folder (PNG/JPG files found recursively, sorted by path)."""
    source = Path(source)
    if not source.is_dir():
        raise FileNotFoundError(f"image folder not found: {source}")
    info = source / "data_info.json"
    if info.is_file():
        return [source / entry["path"] for entry in json.loads(info.read_text())]
    return sorted(p for p in source.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())


def read_image(path: Path, size: int | None = None) -> np.ndarray:
    """(H, W, 3) uint8 RGB, resized (bilinear) to ``size``×``size`` when given and different."""
    with Image.open(path) as image:
        image = image.convert("RGB")
        if size is not None and image.size != (size, size):
            image = image.resize((size, size), Image.BILINEAR)
        return np.asarray(image, dtype=np.uint8)


def iter_image_batches(
    paths: Sequence[Path], batch_size: int, size: int | None = None, report: FolderReport | None = None
) -> Iterator[torch.Tensor]:
    """uint8 (B, 3, size, size) batches of the readable images among ``paths``, in order; unreadable files are
    recorded in ``report.skipped`` and left out. Without ``size`` images keep their own size (the FID Inception
    resizes inside the network, as pytorch-fid does) and a batch ends early where the size changes."""
    report = report if report is not None else FolderReport()
    batch = []

    def stacked() -> torch.Tensor:
        return torch.from_numpy(np.stack(batch)).permute(0, 3, 1, 2).contiguous()

    for path in paths:
        try:
            image = read_image(path, size)
        except (OSError, ValueError, SyntaxError):  # PIL's errors for truncated, corrupt or non-image files
            report.skipped.append(str(path))
            continue
        report.read += 1
        if batch and image.shape != batch[0].shape:
            yield stacked()
            batch = []
        batch.append(image)
        if len(batch) == batch_size:
            yield stacked()
            batch = []
    if batch:
        yield stacked()


def read_sample_folder(folder: str | Path) -> tuple[torch.Tensor, list[str]]:
    """A folder written by :func:`save_samples` or ``sample_to_folder``: uint8 images (N, 3, H, W) and their prompts,
    in order; a folder with a ``manifest.json`` must hold its prompts and one image for each."""
    folder = Path(folder)
    prompts_path = folder / PROMPTS_FILE
    if not prompts_path.is_file():
        raise FileNotFoundError(f"{prompts_path} not found; sample folders list one prompt per image in it")
    prompts = prompts_path.read_text().splitlines()
    paths = list_images(folder)
    check_sample_folder(folder, prompts, len(paths))
    if len(paths) != len(prompts):
        raise ValueError(f"{folder} has {len(paths)} images but {len(prompts)} lines in {PROMPTS_FILE}")
    report = FolderReport()
    images = torch.cat(list(iter_image_batches(paths, batch_size=256, report=report)))
    if report.skipped:
        raise ValueError(f"{folder}: {report.summary()}; cannot pair images with prompts")
    return images, prompts


def save_samples(images: torch.Tensor, out: str | Path, start: int = 0) -> list[Path]:
    """Write uint8 (N, 3, H, W) images as ``{start + i:05d}.png`` under ``out``; the caller owns ``prompts.txt``."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, image in enumerate(images):
        path = out / f"{start + i:05d}.png"
        Image.fromarray(image.permute(1, 2, 0).numpy()).save(path)
        paths.append(path)
    return paths
