"""Attention of the PixArt block: self-attention (with PixArt-Sigma's qk-norm and KV token compression) and
cross-attention to the caption tokens.

PixArt-Sigma §2.3 ("efficient DiT design"): in the layers listed by ``kv_compress_config['kv_compress_layer']`` the
keys and values of self-attention are compressed on the (h, w) token grid by ``scale_factor`` (sr) per axis, so the
attention costs N x N / sr² instead of N x N; the queries, and so the output length, are never compressed. Modes
(``sampling``), as the official ``AttentionKVCompress``:

- ``conv``: depthwise Conv2d(k = stride = sr) initialised to the mean of each sr x sr block (weight 1/sr², bias 0),
  then LayerNorm(hidden) at its default init (keys ``attn.sr.*``, ``attn.norm.*``);
- ``ave``: ``F.interpolate(scale_factor=1/sr, mode='nearest')``, i.e. the top-left token of each sr x sr block;
- ``uniform``: the strided slice ``[::sr, ::sr]`` of the grid (the same tokens as ``ave``);
- ``uniform_every``: every sr-th token of the flattened sequence (ignores the 2-D layout; keeps N // sr tokens).

Odd grids: the compressed grid is floor(h / sr) x floor(w / sr) in every 2-D mode (the last row / column that does not
fill an sr x sr block is dropped, as the convolution and the interpolation do); the official ``uniform`` and
``uniform_every`` keep ceil instead and then crash on a reshape. ``uniform_every`` keeps floor(N / sr) tokens.

qk-norm (Σ option, off in every released config): LayerNorm(hidden) over the full q and k, before the head split and
before KV compression (keys ``attn.q_norm.*``, ``attn.k_norm.*``).
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
import torch.nn.functional as F
from torch import nn

from diffusion.model.onednn import Linear

KV_SAMPLINGS = ("conv", "ave", "uniform", "uniform_every")


def compressed_grid(grid_h: int, grid_w: int, sr: int) -> tuple[int, int]:
    """The (h', w') token grid that keys/values of an (grid_h, grid_w) grid are compressed to: floor per axis."""
    out = (grid_h // sr, grid_w // sr)
    if min(out) < 1:
        raise ValueError(
            f"KV compression by {sr} needs a token grid of at least {sr} x {sr}; got {grid_h} x {grid_w} "
            "(a larger image, or a smaller kv_compress_config.scale_factor)"
        )
    return out


class SelfAttention(nn.Module):
    """Multi-head self-attention with a fused ``qkv`` projection (official key names).

    forward(x (B, N, D), hw=(h, w) the token grid with h * w = N; needed only with KV compression) -> (B, N, D).
    ``sampling`` / ``sr_ratio``: KV compression of this layer (``sr_ratio`` 1: none); ``qk_norm``: LayerNorm of q, k.
    """

    def __init__(
        self, hidden_size: int, num_heads: int, qk_norm: bool = False, sampling: str | None = None, sr_ratio: int = 1
    ):
        super().__init__()
        if sr_ratio > 1 and sampling not in KV_SAMPLINGS:
            raise ValueError(f"KV compression sampling must be one of {KV_SAMPLINGS}, got {sampling!r}")
        self.num_heads = num_heads
        self.sr_ratio = sr_ratio
        self.sampling = sampling if sr_ratio > 1 else None
        self.qkv = Linear(hidden_size, 3 * hidden_size)
        self.proj = Linear(hidden_size, hidden_size)
        if self.sampling == "conv":
            self.sr = nn.Conv2d(hidden_size, hidden_size, sr_ratio, stride=sr_ratio, groups=hidden_size)
            self.norm = nn.LayerNorm(hidden_size)
            self.reset_compression()
        self.q_norm = nn.LayerNorm(hidden_size) if qk_norm else None
        self.k_norm = nn.LayerNorm(hidden_size) if qk_norm else None

    def reset_compression(self) -> None:
        """The official init of the ``conv`` compression: mean over each sr x sr block, then a default LayerNorm."""
        if self.sampling != "conv":
            return
        with torch.no_grad():
            self.sr.weight.fill_(1.0 / self.sr_ratio**2)
            self.sr.bias.zero_()
        self.norm.reset_parameters()

    def compression_keys(self) -> list[str]:
        """Names (relative to this module) of the compression's own weights: empty unless ``conv``."""
        return ["sr.weight", "sr.bias", "norm.weight", "norm.bias"] if self.sampling == "conv" else []

    def compress(self, tokens: torch.Tensor, hw: tuple[int, int] | None) -> torch.Tensor:
        """Keys or values (B, N, D) on the (h, w) grid -> (B, N', D), N' = floor(h/sr) * floor(w/sr) (2-D modes)
        or floor(N / sr) (``uniform_every``)."""
        b, n, d = tokens.shape
        sr = self.sr_ratio
        if self.sampling == "uniform_every":
            if n < sr:
                raise ValueError(f"KV compression by {sr} (uniform_every) needs at least {sr} tokens, got {n}")
            return tokens[:, : (n // sr) * sr : sr]
        if hw is None or hw[0] * hw[1] != n:
            raise ValueError(f"KV compression needs the token grid (h, w) with h * w = {n}; got hw={hw}")
        gh, gw = hw
        oh, ow = compressed_grid(gh, gw, sr)
        grid = tokens.reshape(b, gh, gw, d)
        if self.sampling == "conv":
            out = self.sr(grid.permute(0, 3, 1, 2))  # (B, D, oh, ow): the strided conv drops the remainder
            return self.norm(out.flatten(2).transpose(1, 2))  # (B, oh * ow, D)
        # "ave" (nearest interpolation by 1/sr) and "uniform" pick the same token: the top-left of each block
        return grid[:, : oh * sr : sr, : ow * sr : sr].reshape(b, oh * ow, d)

    def forward(self, x: torch.Tensor, hw: tuple[int, int] | None = None) -> torch.Tensor:
        b, n, d = x.shape
        h, dh = self.num_heads, d // self.num_heads
        if self.q_norm is None and self.sampling is None:  # PixArt-alpha: one reshape of the fused projection
            qkv = self.qkv(x).reshape(b, n, 3, h, dh).permute(2, 0, 3, 1, 4)  # (3, B, h, N, dh)
            out = F.scaled_dot_product_attention(qkv[0], qkv[1], qkv[2])  # (B, h, N, dh)
            return self.proj(out.transpose(1, 2).reshape(b, n, d))
        q, k, v = self.qkv(x).chunk(3, dim=-1)  # (B, N, D) each
        if self.q_norm is not None:  # on the full width, before the head split and the compression
            q, k = self.q_norm(q), self.k_norm(k)
        if self.sampling is not None:
            k, v = self.compress(k, hw), self.compress(v, hw)  # (B, N', D)
        q = q.reshape(b, n, h, dh).transpose(1, 2)  # (B, h, N, dh)
        k = k.reshape(b, -1, h, dh).transpose(1, 2)  # (B, h, N', dh)
        v = v.reshape(b, -1, h, dh).transpose(1, 2)
        out = F.scaled_dot_product_attention(q, k, v)  # (B, h, N, dh)
        return self.proj(out.transpose(1, 2).reshape(b, n, d))


class CrossAttention(nn.Module):
    """Image tokens attend to caption tokens; ``attn_mask`` (B, 1, 1, L) bool hides padded caption tokens."""

    def __init__(self, hidden_size: int, num_heads: int):
        super().__init__()
        self.num_heads = num_heads
        self.q_linear = Linear(hidden_size, hidden_size)
        self.kv_linear = Linear(hidden_size, 2 * hidden_size)
        self.proj = Linear(hidden_size, hidden_size)

    def key_value(self, y: torch.Tensor) -> torch.Tensor:
        """Caption tokens (B, L, D) -> keys and values (2, B, h, L, dh); they depend on neither x nor t."""
        b, length, d = y.shape
        return self.kv_linear(y).reshape(b, length, 2, self.num_heads, d // self.num_heads).permute(2, 0, 3, 1, 4)

    def forward(
        self, x: torch.Tensor, y: torch.Tensor | None, attn_mask: torch.Tensor | None, kv: torch.Tensor | None = None
    ) -> torch.Tensor:
        """``kv``: :meth:`key_value` of the caption computed beforehand (then ``y`` is not used)."""
        b, n, d = x.shape
        h, dh = self.num_heads, d // self.num_heads
        q = self.q_linear(x).reshape(b, n, h, dh).transpose(1, 2)  # (B, h, N, dh)
        kv = self.key_value(y) if kv is None else kv
        out = F.scaled_dot_product_attention(q, kv[0], kv[1], attn_mask=attn_mask)  # (B, h, N, dh)
        return self.proj(out.transpose(1, 2).reshape(b, n, d))


KV_COMPRESS_KEYS = ("sampling", "scale_factor", "kv_compress_layer")


def kv_compress_plan(config: Mapping | None, depth: int) -> list[tuple[str | None, int]]:
    """Per block, (sampling, sr_ratio) from a model's ``kv_compress_config`` (None: no compression anywhere).

    ``config = dict(sampling='conv' | 'ave' | 'uniform' | 'uniform_every', scale_factor=2, kv_compress_layer=[14,
    ..., 27])`` as the official Σ configs; an unknown or missing key, a non-integral factor or a layer outside
    [0, depth) is an error naming ``model.kv_compress_config``.
    """
    if config is None:
        return [(None, 1)] * depth
    name = "model.kv_compress_config"
    if not isinstance(config, Mapping):
        raise TypeError(f"{name} must be a dict({', '.join(KV_COMPRESS_KEYS)}) or None, got {config!r}")
    unknown, missing = sorted(set(config) - set(KV_COMPRESS_KEYS)), [k for k in KV_COMPRESS_KEYS if k not in config]
    if unknown or missing:
        raise KeyError(f"{name}: unknown key(s) {unknown}, missing key(s) {missing}; known: {list(KV_COMPRESS_KEYS)}")
    factor, layers, sampling = config["scale_factor"], list(config["kv_compress_layer"] or []), config["sampling"]
    if isinstance(factor, bool) or not float(factor).is_integer() or factor < 1:
        raise ValueError(f"{name}.scale_factor must be an integer >= 1, got {factor!r}")
    bad = [i for i in layers if isinstance(i, bool) or not isinstance(i, int) or not 0 <= i < depth]
    if bad:
        raise ValueError(f"{name}.kv_compress_layer: {bad} are not block indices in [0, {depth})")
    sr = int(factor)
    if sr > 1 and layers and sampling not in KV_SAMPLINGS:
        raise ValueError(f"{name}.sampling must be one of {KV_SAMPLINGS}, got {sampling!r}")
    return [(sampling, sr) if i in layers and sr > 1 else (None, 1) for i in range(depth)]
