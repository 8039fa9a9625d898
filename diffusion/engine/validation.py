"""Sample grids written during training (the qualitative progress of PixArt-δ Fig. 8 / Fig. 12 style snapshots), and
the memory-light way the trainer samples them: prompts encoded once, EMA weights swapped into the trained network."""

import math
import os
from contextlib import contextmanager
from pathlib import Path

import torch
from PIL import Image
from torch import nn


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


class EncodedPrompts:
    """Caption features of the validation prompts, computed once; served to the ``Pipeline`` like a text encoder.

    At 1024 px the encoder is T5-XXL (4.7 B parameters): it runs once in bf16 on the device and is freed, instead of
    staying on rank 0 for the whole run. y: (P, 1, L, C), mask: (P, L), kept on the CPU.
    """

    def __init__(self, prompts: list[str], y: torch.Tensor, mask: torch.Tensor) -> None:
        self.index = {p: i for i, p in enumerate(prompts)}
        self.y, self.mask = y.cpu(), mask.cpu()

    @classmethod
    def from_config(cls, cfg, prompts: list[str], device: torch.device) -> "EncodedPrompts":
        from diffusion.build import build_text_encoder

        dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
        encoder = build_text_encoder(cfg, device, dtype)
        with torch.no_grad():
            y, mask = encoder.encode(list(prompts))
        encoded = cls(list(prompts), y.float(), mask)
        del encoder
        if device.type == "cuda":
            torch.cuda.empty_cache()
        return encoded

    def encode(self, prompts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        unknown = [p for p in prompts if p not in self.index]
        if unknown:
            raise KeyError(f"prompts not encoded for validation: {unknown}")
        rows = torch.tensor([self.index[p] for p in prompts])
        return self.y[rows], self.mask[rows]


def _local(tensor: torch.Tensor) -> torch.Tensor:
    return tensor.to_local() if hasattr(tensor, "to_local") else tensor


@contextmanager
def swapped_in(module: nn.Module, shadow: dict[str, torch.Tensor] | None):
    """Run the block with ``shadow`` (EMA weights, same names and shards as ``module``'s tensors) loaded into
    ``module`` in place, then put the trained weights back: sampling needs no second copy of the network on the
    device, only a CPU copy of this rank's trained tensors. ``shadow`` None: the module as it is."""
    if shadow is None:
        yield module
        return
    tensors = dict(module.named_parameters())
    tensors.update({n: b for n, b in module.named_buffers() if b.is_floating_point()})
    backup = {n: _local(t).detach().to("cpu", copy=True) for n, t in tensors.items() if n in shadow}
    with torch.no_grad():
        for name in backup:
            _local(tensors[name]).copy_(_local(shadow[name]))
    try:
        yield module
    finally:
        if hasattr(module, "reshard"):  # FSDP2: free gathered weights before writing the shards back
            module.reshard()
        with torch.no_grad():
            for name, value in backup.items():
                _local(tensors[name]).copy_(value)
