"""Image codecs: the map between pixels and the latent space the diffusion transformer works in.

PixArt-α/δ encode images with the SD VAE (sd-vae-ft-ema, 4 channels, downsample 8, scale_factor 0.18215) and store
the posterior as [mean ‖ std] (facts §3.4, §6). ``AutoencoderKLCodec`` wraps that VAE; ``PixelCodec`` is a lossless
space-to-depth stand-in for the embedded default, so tiny runs need no VAE weights.

Interface (both classes): ``encode(images in [-1, 1], (B, 3, H, W)) -> (mean, std)`` each (B, C, h, w), unscaled;
``decode(z (B, C, h, w), unscaled) -> images in [-1, 1]``. The trainer samples ``x0 = (mean + std·ε)·scale_factor``
(see ``prepare_batch``); a sampler decodes ``decode(x0 / scale_factor)``.
"""

from pathlib import Path
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import nn

from diffusion.registry import CODECS

if TYPE_CHECKING:
    import diffusers


@CODECS.register_module()
class PixelCodec(nn.Module):
    """Space-to-depth "latent": a (3, H, W) image becomes (3·d², H/d, W/d); deterministic (std = 0), lossless."""

    def __init__(self, downsample: int = 2, scale_factor: float = 1.0) -> None:
        super().__init__()
        self.downsample = downsample
        self.scale_factor = scale_factor
        self.latent_channels = 3 * downsample**2

    @torch.no_grad()
    def encode(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, 3, H, W) in [-1, 1] → mean, std each (B, 3·d², H/d, W/d)."""
        mean = F.pixel_unshuffle(images, self.downsample)
        return mean, torch.zeros_like(mean)

    @torch.no_grad()
    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """(B, 3·d², h, w) → (B, 3, h·d, w·d), clamped to [-1, 1]."""
        return F.pixel_shuffle(z, self.downsample).clamp(-1, 1)


@CODECS.register_module()
class AutoencoderKLCodec(nn.Module):
    """A diffusers ``AutoencoderKL`` loaded from a local directory (e.g. output/pretrained_models/sd-vae-ft-ema), or
    one already built (``path`` an ``AutoencoderKL``: the benchmarks share one VAE between two pipelines).

    ``scale_factor`` defaults to the VAE's own ``config.scaling_factor`` (0.18215 for the SD VAE PixArt uses,
    0.13025 for SDXL's); pass it only to override that.
    """

    def __init__(
        self,
        path: "str | Path | diffusers.AutoencoderKL",
        scale_factor: float | None = None,
        dtype: torch.dtype = torch.float32,
    ) -> None:
        super().__init__()
        from diffusers import AutoencoderKL  # imported on use: diffusers takes seconds to import

        if isinstance(path, AutoencoderKL):
            self.vae = path if path.dtype == dtype else path.to(dtype)
        else:
            path = Path(path)
            if not (path / "config.json").is_file():
                raise FileNotFoundError(f"no AutoencoderKL at {path} (expected {path / 'config.json'})")
            self.vae = AutoencoderKL.from_pretrained(str(path), torch_dtype=dtype, local_files_only=True)
        self.vae.eval().requires_grad_(False)
        self.path = path
        self.scale_factor = float(self.vae.config.scaling_factor if scale_factor is None else scale_factor)
        self.latent_channels = self.vae.config.latent_channels
        self.downsample = 2 ** (len(self.vae.config.block_out_channels) - 1)

    @torch.no_grad()
    def encode(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, 3, H, W) in [-1, 1] → posterior mean, std each (B, C, H/d, W/d), in float32."""
        posterior = self.vae.encode(images.to(self.vae.dtype)).latent_dist
        return posterior.mean.float(), posterior.std.float()

    def set_lean_decode(self, enabled: bool = True) -> None:
        """Decode one image at a time and, above the VAE's native size, in overlapping tiles (diffusers' slicing and
        tiling): peak memory no longer grows with the batch and the image area, at the cost of blended tile seams."""
        for what in ("slicing", "tiling"):
            getattr(self.vae, f"{'enable' if enabled else 'disable'}_{what}")()

    @torch.no_grad()
    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """(B, C, h, w) unscaled latent → (B, 3, h·d, w·d) in [-1, 1] (float32)."""
        return self.vae.decode(z.to(self.vae.dtype)).sample.float().clamp(-1, 1)


def make_tiny_vae(path: str | Path, seed: int = 0, scaling_factor: float = 0.18215) -> Path:
    """Save a small randomly initialised diffusers ``AutoencoderKL`` (4 latent channels, downsample 2) to ``path``,
    in the real format, so the VAE-latent path (``AutoencoderKLCodec``) can be run end to end without downloads."""
    from diffusers import AutoencoderKL

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        vae = AutoencoderKL(
            block_out_channels=(16, 32),
            down_block_types=("DownEncoderBlock2D",) * 2,
            up_block_types=("UpDecoderBlock2D",) * 2,
            latent_channels=4,
            norm_num_groups=8,
            layers_per_block=1,
            scaling_factor=scaling_factor,
        )
    vae.save_pretrained(str(path))
    return Path(path)
