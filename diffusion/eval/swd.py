"""Multi-scale sliced Wasserstein distance on Laplacian-pyramid patches (Karras et al. 2018, "Progressive Growing of
GANs", §5 and appendix D: the ProGAN metric), for small images.

FID through a feature network can miss texture (a blotchy, noisy 4-step teacher sample and a clean one may share
their features); SWD compares the distributions of local patches at every scale of a Laplacian pyramid: the finest
level sees noise and sharpness, the coarsest (the low-pass image itself) colour and layout.

Per level of the pyramid (full resolution, then halving down to ``min_resolution``): ``patches_per_image`` random
7 x 7 neighbourhoods per image (the same positions in both sets), each channel normalised by the mean and standard
deviation of that channel over both sets' patches at that level, flattened to 147-d descriptors; the sliced
Wasserstein distance is the mean absolute difference of the sorted projections of the two descriptor sets on
``directions`` random unit directions, averaged over ``repeats`` draws. Reported x 1e3 per level (key: the level's
resolution) and averaged (``"avg"``).

Choices for small images and for a metric that must be symmetric and exactly 0 on identical sets:
- levels go down to 8 x 8 (ProGAN stops at 16 x 16 for 128-1024 px images): a 32 x 32 image has levels 32, 16, 8,
  and at 8 x 8 a 7 x 7 patch covers almost the whole low-pass image, i.e. its colours and layout;
- the normalisation statistics are pooled over both sets (ProGAN normalises each set by its own), so a global colour
  shift is seen at the coarse level instead of being normalised away; the distance is unchanged by an affine rescale
  applied to both sets;
- patch positions and projection directions come from one generator seeded with ``seed``; sets of unequal size are
  compared through their projections' quantiles on a common grid.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

PATCH = 7  # ProGAN's neighbourhood, patches per image, directions per repeat and repeats: swd()'s defaults
PATCHES_PER_IMAGE = 128
DIRECTIONS = 128
REPEATS = 4
_BINOMIAL = torch.tensor([1.0, 4.0, 6.0, 4.0, 1.0]) / 16.0


def _blur(x: torch.Tensor, gain: float = 1.0) -> torch.Tensor:
    """Separable 5-tap binomial filter, reflect-padded; x (N, C, H, W)."""
    k = (_BINOMIAL * gain**0.5).to(x)
    c = x.shape[1]
    x = F.conv2d(F.pad(x, (2, 2, 0, 0), mode="reflect"), k.view(1, 1, 1, 5).repeat(c, 1, 1, 1), groups=c)
    return F.conv2d(F.pad(x, (0, 0, 2, 2), mode="reflect"), k.view(1, 1, 5, 1).repeat(c, 1, 1, 1), groups=c)


def pyr_down(x: torch.Tensor) -> torch.Tensor:
    """Blur, then keep every second pixel: (N, C, H, W) -> (N, C, H/2, W/2)."""
    return _blur(x)[:, :, ::2, ::2]


def pyr_up(x: torch.Tensor) -> torch.Tensor:
    """Insert zeros between pixels, then blur with gain 4: (N, C, H, W) -> (N, C, 2H, 2W)."""
    up = torch.zeros(*x.shape[:2], 2 * x.shape[2], 2 * x.shape[3], dtype=x.dtype, device=x.device)
    up[:, :, ::2, ::2] = x
    return _blur(up, gain=4.0)


def laplacian_pyramid(images: torch.Tensor, levels: int) -> list[torch.Tensor]:
    """``levels`` band-pass images, finest first; the last is the low-pass image at the coarsest resolution."""
    pyramid, current = [], images
    for _ in range(levels - 1):
        down = pyr_down(current)
        pyramid.append(current - pyr_up(down))
        current = down
    return pyramid + [current]


def _as_float(images: torch.Tensor) -> torch.Tensor:
    if images.ndim != 4:
        raise ValueError(f"images must be (N, C, H, W), got {tuple(images.shape)}")
    return images.float() / 255.0 if images.dtype == torch.uint8 else images.float()


def _patches(level: torch.Tensor, ys: torch.Tensor, xs: torch.Tensor, size: int) -> torch.Tensor:
    """(N, C, H, W) at positions ys, xs (N, K) -> (N * K, C, size * size)."""
    n, c, h, w = level.shape
    offsets = (torch.arange(size)[:, None] * w + torch.arange(size)[None, :]).reshape(-1)  # (size^2,)
    index = (ys * w + xs)[..., None] + offsets  # (N, K, size^2)
    k = index.shape[1]
    flat = level.reshape(n, c, h * w)
    gathered = flat.gather(2, index.reshape(n, 1, -1).expand(n, c, -1))  # (N, C, K * size^2)
    return gathered.reshape(n, c, k, size * size).permute(0, 2, 1, 3).reshape(n * k, c, size * size)


def _quantiles(sorted_proj: torch.Tensor, count: int) -> torch.Tensor:
    """Sorted projections (D, M) at ``count`` evenly spaced quantiles (linear interpolation; M == count: as is)."""
    m = sorted_proj.shape[1]
    if m == count:
        return sorted_proj
    pos = ((torch.arange(count, dtype=torch.float64) + 0.5) * m / count - 0.5).clamp(0, m - 1)
    lo = pos.floor().long()
    hi = (lo + 1).clamp(max=m - 1)
    frac = (pos - lo).to(sorted_proj.dtype)
    return sorted_proj[:, lo] * (1 - frac) + sorted_proj[:, hi] * frac


def _sorted_rows(x: torch.Tensor) -> torch.Tensor:
    """x (D, M) with every row sorted ascending: numpy's sort (SIMD) is ~4x faster than torch's on a CPU and is >90%
    of the metric's time (measured at 240 images of 32 x 32); the same values either way."""
    return torch.from_numpy(np.sort(x.detach().cpu().numpy(), axis=1)).to(x.device)


def sliced_wasserstein(a: torch.Tensor, b: torch.Tensor, directions: int, repeats: int, generator) -> float:
    """Mean |sorted(a @ d) - sorted(b @ d)| over random unit directions d; a (M, D), b (M', D)."""
    total, count = 0.0, min(a.shape[0], b.shape[0])
    for _ in range(repeats):
        d = torch.randn(a.shape[1], directions, generator=generator)
        d = d / d.norm(dim=0, keepdim=True)
        # (directions, M): each direction's projections contiguous, sorted along the last dimension
        pa = _quantiles(_sorted_rows(d.T @ a.T), count)
        pb = _quantiles(_sorted_rows(d.T @ b.T), count)
        total += (pa - pb).abs().mean(dtype=torch.float64).item()
    return total / repeats


def level_resolutions(size: int, min_resolution: int = 8, patch: int = 7) -> list[int]:
    """The pyramid's resolutions for images of side ``size``: size, size/2, ... down to ``min_resolution``."""
    if min_resolution < patch:
        raise ValueError(f"min_resolution {min_resolution} is below the patch size {patch}")
    resolutions = [size]
    while resolutions[-1] // 2 >= min_resolution and resolutions[-1] % 2 == 0:
        resolutions.append(resolutions[-1] // 2)
    return resolutions


def swd(
    a: torch.Tensor,
    b: torch.Tensor,
    min_resolution: int = 8,
    patch: int = PATCH,
    patches_per_image: int = PATCHES_PER_IMAGE,
    directions: int = DIRECTIONS,
    repeats: int = REPEATS,
    seed: int = 0,
) -> dict[str, float]:
    """SWD x 1e3 between two image sets, per pyramid level (key: its resolution, finest first) and ``"avg"``.

    a, b: (N, C, H, W) and (N', C, H, W); uint8 (read as /255) or float, the same convention for both.
    """
    a, b = _as_float(a), _as_float(b)
    if a.shape[1:] != b.shape[1:]:
        raise ValueError(f"both sets need the same (C, H, W): {tuple(a.shape[1:])} vs {tuple(b.shape[1:])}")
    h, w = a.shape[2:]
    if h != w:
        raise ValueError(f"square images expected, got {h} x {w}")
    resolutions = level_resolutions(h, min_resolution, patch)
    generator = torch.Generator().manual_seed(seed)
    pyramids = [laplacian_pyramid(x, len(resolutions)) for x in (a, b)]
    n = max(a.shape[0], b.shape[0])
    out = {}
    for level, res in enumerate(resolutions):
        ys = torch.randint(0, res - patch + 1, (n, patches_per_image), generator=generator)
        xs = torch.randint(0, res - patch + 1, (n, patches_per_image), generator=generator)
        descs = [_patches(p[level], ys[: len(p[level])], xs[: len(p[level])], patch) for p in pyramids]
        both = torch.cat(descs)  # (M + M', C, patch^2): one normalisation for both sets
        mean = both.mean(dim=(0, 2), keepdim=True)
        std = both.std(dim=(0, 2), keepdim=True).clamp_min(1e-8)
        da, db = ((d - mean) / std for d in descs)
        dist = sliced_wasserstein(da.flatten(1), db.flatten(1), directions, repeats, generator)
        out[str(res)] = dist * 1e3
    out["avg"] = sum(out.values()) / len(resolutions)
    return out
