"""Embedders of the PixArt-alpha transformer (PixArt-alpha §2.3; PixArt-delta builds on it unchanged).

Patch embedding, the 2-D sin-cos position table, the timestep and micro-condition (size / aspect-ratio) embedders and
the caption projection with its learned null caption for classifier-free guidance.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache

import torch
import torch.nn.functional as F
from torch import nn

from diffusion.model.onednn import Linear, linear


@lru_cache(maxsize=32)
def _sincos_table(embed_dim: int, grid_h: int, grid_w: int, pe_interpolation: float, base_size: int) -> torch.Tensor:
    if embed_dim % 4:
        raise ValueError(f"2-D sin-cos position embedding needs embed_dim divisible by 4, got {embed_dim}")
    # Coordinates are rescaled so that every resolution spans the range of the base grid / pe_interpolation.
    gh = torch.arange(grid_h, dtype=torch.float64) / (grid_h / base_size) / pe_interpolation
    gw = torch.arange(grid_w, dtype=torch.float64) / (grid_w / base_size) / pe_interpolation
    mesh_w, mesh_h = torch.meshgrid(gw, gh, indexing="xy")  # (grid_h, grid_w) each; w first, as the official code

    def one_axis(pos: torch.Tensor) -> torch.Tensor:
        omega = 1.0 / 10000 ** (torch.arange(embed_dim // 4, dtype=torch.float64) / (embed_dim / 4))
        out = pos.reshape(-1, 1) * omega[None]  # (N, D/4)
        return torch.cat([out.sin(), out.cos()], dim=1)  # (N, D/2)

    return torch.cat([one_axis(mesh_w), one_axis(mesh_h)], dim=1).float()  # (N, D)


def sincos_pos_embed(
    embed_dim: int, grid_h: int, grid_w: int, pe_interpolation: float, base_size: int
) -> torch.Tensor:
    """2-D sin-cos position table, (grid_h * grid_w, embed_dim), rows in raster order (h major).

    The first half of the channels encodes the w coordinate and the second half the h coordinate; coordinates are
    ``arange(n) / (n / base_size) / pe_interpolation``, so a larger grid covers the same range as the base grid.
    """
    return _sincos_table(embed_dim, grid_h, grid_w, float(pe_interpolation), base_size)


def sinusoid(values: torch.Tensor, dim: int = 256, max_period: float = 10000.0) -> torch.Tensor:
    """Sinusoidal features of a 1-D tensor of (possibly fractional) values, (N,) -> (N, dim), order [cos, sin].

    Always computed in float32 from the exact values (as diffusers does), whatever the model dtype.
    """
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32, device=values.device) / half)
    args = values.float()[:, None] * freqs[None]
    emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
    if dim % 2:
        emb = torch.cat([emb, torch.zeros_like(emb[:, :1])], dim=-1)
    return emb


class PatchEmbed(nn.Module):
    """Non-overlapping patches, (B, C, H, W) -> (B, H/p * W/p, D)."""

    def __init__(self, patch_size: int, in_channels: int, hidden_size: int):
        super().__init__()
        self.patch_size = patch_size
        self.proj = nn.Conv2d(in_channels, hidden_size, kernel_size=patch_size, stride=patch_size, bias=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """As a linear map of the flattened patches: the tokens come out contiguous in (B, N, D) (the convolution's
        ``flatten(2).transpose(1, 2)`` left every later elementwise op and LayerNorm on a transposed layout)."""
        b, c, h, w = x.shape
        p = self.patch_size
        if h % p or w % p or not isinstance(self.proj, nn.Conv2d):  # the convolution drops the remainder
            return self.proj(x).flatten(2).transpose(1, 2)
        patches = x.reshape(b, c, h // p, p, w // p, p).permute(0, 2, 4, 1, 3, 5)  # (B, h, w, C, p, p)
        weight = self.proj.weight.reshape(self.proj.out_channels, c * p * p)
        return linear(patches.reshape(b, (h // p) * (w // p), c * p * p), weight, self.proj.bias)  # (B, N, D)


class TimestepEmbedder(nn.Module):
    """Scalar -> 256-d sinusoid -> MLP. Used for the diffusion timestep (width D)."""

    def __init__(self, hidden_size: int, frequency_dim: int = 256):
        super().__init__()
        self.frequency_dim = frequency_dim
        self.mlp = nn.Sequential(Linear(frequency_dim, hidden_size), nn.SiLU(), Linear(hidden_size, hidden_size))

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        """(N,) -> (N, D)."""
        return self.mlp(sinusoid(t, self.frequency_dim).to(self.mlp[0].weight.dtype))


class SizeEmbedder(TimestepEmbedder):
    """Micro-condition embedder: each of the k scalars of a row is embedded separately, (B, k) -> (B, k * D)."""

    def forward(self, s: torch.Tensor) -> torch.Tensor:
        b, k = s.shape
        return super().forward(s.reshape(-1)).reshape(b, k * self.mlp[2].out_features)


class CaptionEmbedder(nn.Module):
    """Projects text-encoder features to the model width; replaces dropped captions by the learned null caption.

    ``y_embedding`` (L, C_text) is a buffer, as in the official checkpoints: it is the unconditional input for
    classifier-free guidance and for the LCM teacher's unconditional branch.
    """

    def __init__(self, caption_channels: int, hidden_size: int, model_max_length: int, uncond_prob: float):
        super().__init__()
        self.uncond_prob = uncond_prob
        self.y_proj = Mlp(caption_channels, hidden_size, hidden_size)
        self.register_buffer("y_embedding", torch.randn(model_max_length, caption_channels) / caption_channels**0.5)

    def null_caption(self, batch_size: int) -> torch.Tensor:
        """The unconditional caption, (B, 1, L, C_text)."""
        return self.y_embedding[None, None].expand(batch_size, 1, -1, -1)

    def drop(self, y: torch.Tensor) -> torch.Tensor:
        """Replace each sample's caption by the null caption with probability ``uncond_prob``. y: (B, 1, L, C)."""
        if y.shape[-2] != self.y_embedding.shape[0]:
            raise ValueError(f"caption length {y.shape[-2]} != model_max_length {self.y_embedding.shape[0]}")
        drop = torch.rand(y.shape[0], device=y.device) < self.uncond_prob
        return torch.where(drop[:, None, None, None], self.y_embedding.to(y.dtype), y)

    def forward(self, y: torch.Tensor) -> torch.Tensor:
        """(B, 1, L, C_text) -> (B, L, D). Caption dropout only in training mode."""
        if self.training and self.uncond_prob > 0:
            y = self.drop(y)
        return self.y_proj(y.squeeze(1))


class Mlp(nn.Module):
    """Linear -> GELU(tanh) -> Linear, with the official ``fc1``/``fc2`` names."""

    def __init__(self, in_features: int, hidden_features: int, out_features: int):
        super().__init__()
        self.fc1 = Linear(in_features, hidden_features)
        self.fc2 = Linear(hidden_features, out_features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if isinstance(self.fc1, Linear):  # not wrapped (a LoRA adapter is): the GELU runs inside fc1's call
            return self.fc2(linear(x, self.fc1.weight, self.fc1.bias, gelu=True))
        return self.fc2(F.gelu(self.fc1(x), approximate="tanh"))


@dataclass
class EncodedCaption:
    """What a prompt batch contributes to every step: projected tokens (B, L', D), attention mask (B,1,1,L') | None,
    and each block's cross-attention keys/values (2, B, h, L', dh)."""

    tokens: torch.Tensor
    attn_mask: torch.Tensor | None
    kv: list[torch.Tensor]


def trim_caption_padding(y: torch.Tensor, mask: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Drop trailing caption positions that no sample uses; return an attention mask (B,1,1,L') or None.

    y: (B, 1, L, C); mask: (B, L) of 0/1 or None (all tokens valid).
    """
    if mask is None:
        return y, None
    if mask.ndim != 2 or mask.shape[0] != y.shape[0] or mask.shape[1] != y.shape[2]:
        raise ValueError(f"caption mask must be (B, L) = {(y.shape[0], y.shape[2])}, got {tuple(mask.shape)}")
    keep = mask.bool()
    if not keep.any(dim=1).all():
        raise ValueError("caption mask has a sample with no valid token")
    used = keep.any(dim=0).nonzero()
    length = int(used.max()) + 1
    keep = keep[:, :length]
    attn_mask = None if keep.all() else keep[:, None, None, :]  # (B, 1, 1, L')
    return y[:, :, :length], attn_mask
