"""Tiny models with every weight random (nothing left at its zero init) and matching inputs."""

import torch

from diffusion.model import PixArt, PixArtMS


def randomize(model: torch.nn.Module, std: float = 0.1, seed: int = 0) -> torch.nn.Module:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in list(model.parameters()) + list(model.buffers()):
            p.copy_(torch.randn(p.shape, generator=g) * std)
    return model


TINY_ARCH = dict(  # the tests' tiny PixArt(MS): 48 wide (divisible by 3 for PixArtMS), 2 blocks, 8x8 latents
    input_size=8,
    patch_size=2,
    in_channels=4,
    hidden_size=48,
    depth=2,
    num_heads=3,
    caption_channels=32,
    model_max_length=16,
    pe_interpolation=2.0,
)


def tiny(ms: bool, random: bool = True, std: float = 0.1, **kw) -> PixArt:
    cls = PixArtMS if ms else PixArt
    args = {**TINY_ARCH, **kw}
    model = cls(**args)
    return (randomize(model, std=std) if random else model).eval()


def inputs(batch: int = 3, hw: tuple[int, int] = (8, 12), length: int = 16, channels: int = 32, seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, 4, *hw, generator=g)
    t = torch.tensor([999, 421, 3, 500, 17][:batch])
    y = torch.randn(batch, 1, length, channels, generator=g)
    mask = torch.zeros(batch, length, dtype=torch.long)
    for i, n in enumerate([5, 11, 2, 16, 7][:batch]):
        mask[i, :n] = 1
    hw_px = torch.tensor([[64.0, 96.0], [100.0, 150.0], [48.0, 80.0], [512.0, 512.0], [30.0, 40.0]][:batch])
    info = {"img_hw": hw_px, "aspect_ratio": hw_px[:, :1] / hw_px[:, 1:]}
    return x, t, y, mask, info


# A tiny PixArt-Sigma: no micro-conditions, so the width need not be divisible by 3 (40 = 2 heads x 20); 30-token
# captions stand for the 300 T5 tokens; pe_interpolation 0.5 as the 256 px checkpoint.
SIGMA_ARCH = dict(TINY_ARCH, hidden_size=40, num_heads=2, model_max_length=30, pe_interpolation=0.5)
KV_CONV = dict(sampling="conv", scale_factor=2, kv_compress_layer=[1, 2])


def tiny_sigma(random: bool = True, std: float = 0.1, seed: int = 0, **kw) -> PixArtMS:
    """A tiny multi-scale PixArt-Sigma (``micro_condition=False``); kw: e.g. ``kv_compress_config=KV_CONV``."""
    model = PixArtMS(**{**SIGMA_ARCH, "depth": 3, "micro_condition": False, **kw})
    return (randomize(model, std=std, seed=seed) if random else model).eval()


def sigma_inputs(batch: int = 3, hw: tuple[int, int] = (10, 14), length: int = 30, channels: int = 32, seed: int = 1):
    """Latents of an odd token grid (5 x 7 at patch 2) and 300-token-style masks: mostly padding, one of them the
    single valid token of T5('') (its EOS)."""
    x, t, y, _, _ = inputs(batch, hw, length, channels, seed)
    mask = torch.zeros(batch, length, dtype=torch.long)
    for i, n in enumerate([1, 9, 4, length, 2][:batch]):
        mask[i, :n] = 1
    return x, t, y, mask
