"""The PixArt-alpha transformer block and output layer (PixArt-alpha §2.3, Fig. 4).

Each block: adaLN-single-modulated self-attention, un-modulated cross-attention to the caption tokens, and a
modulated MLP. The six modulation vectors come from one shared ``t_block`` projection plus a per-block learned
``scale_shift_table``. A PixArt-Sigma block is the same block with its self-attention's qk-norm and KV compression
switched on (``diffusion/model/attention.py``). Attention goes through ``F.scaled_dot_product_attention``; linears
through ``diffusion.model.onednn`` (oneDNN in fp32 CPU inference); the modulation and the gated residuals are one fused
multiply-add each (``torch.addcmul``) instead of a multiply and an add.
"""

from __future__ import annotations

import torch
from torch import nn

from diffusion.model.attention import CrossAttention, SelfAttention
from diffusion.model.embeddings import Mlp
from diffusion.model.onednn import Linear


def modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """x * (1 + scale) + shift in one pass; x: (B, N, D); shift, scale: (B, 1, D)."""
    return torch.addcmul(shift, x, 1 + scale)


class DropPath(nn.Module):
    """Stochastic depth: drops a residual branch per sample with probability ``p`` during training."""

    def __init__(self, p: float = 0.0):
        super().__init__()
        self.p = p

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.p == 0.0 or not self.training:
            return x
        keep = torch.rand(x.shape[0], *([1] * (x.ndim - 1)), device=x.device) >= self.p
        return x * keep.to(x.dtype) / (1 - self.p)


class PixArtBlock(nn.Module):
    """One PixArt block. forward(x (B,N,D), y (B,L,D), t0 (B,6D), y_attn_mask (B,1,1,L) | None) -> (B,N,D);
    ``kv`` (2,B,h,L,dh): the cross-attention keys/values of ``y`` computed once for all sampling steps; ``hw``: the
    (h, w) token grid of x (h * w = N), which a KV-compressing block (``sr_ratio`` > 1) needs.

    ``qk_norm``, ``sampling``, ``sr_ratio``: PixArt-Sigma's self-attention options (:class:`SelfAttention`)."""

    def __init__(
        self,
        hidden_size: int,
        num_heads: int,
        mlp_ratio: float = 4.0,
        drop_path: float = 0.0,
        qk_norm: bool = False,
        sampling: str | None = None,
        sr_ratio: int = 1,
    ):
        super().__init__()
        self.norm1 = nn.LayerNorm(hidden_size, elementwise_affine=False, eps=1e-6)
        self.attn = SelfAttention(hidden_size, num_heads, qk_norm=qk_norm, sampling=sampling, sr_ratio=sr_ratio)
        self.cross_attn = CrossAttention(hidden_size, num_heads)
        self.norm2 = nn.LayerNorm(hidden_size, elementwise_affine=False, eps=1e-6)
        self.mlp = Mlp(hidden_size, int(hidden_size * mlp_ratio), hidden_size)
        self.drop_path = DropPath(drop_path)
        self.scale_shift_table = nn.Parameter(torch.randn(6, hidden_size) / hidden_size**0.5)

    def forward(
        self,
        x: torch.Tensor,
        y: torch.Tensor | None,
        t0: torch.Tensor,
        y_attn_mask: torch.Tensor | None,
        kv: torch.Tensor | None = None,
        hw: tuple[int, int] | None = None,
    ) -> torch.Tensor:
        b, _, d = x.shape
        mod = self.scale_shift_table[None] + t0.reshape(b, 6, d)  # (B, 6, D)
        shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp = mod.chunk(6, dim=1)  # (B, 1, D) each
        x = self.gated_residual(x, gate_msa, self.attn(modulate(self.norm1(x), shift_msa, scale_msa), hw))
        x = x + self.cross_attn(x, y, y_attn_mask, kv)
        return self.gated_residual(x, gate_mlp, self.mlp(modulate(self.norm2(x), shift_mlp, scale_mlp)))

    def caption_kv(self, tokens: torch.Tensor) -> torch.Tensor:
        """The cross-attention keys/values of projected caption tokens (B, L, D) -> (2, B, h, L, dh), for ``kv``.
        A method of the block (not of its attention) so that FSDP2 can gather the block's shards around it."""
        return self.cross_attn.key_value(tokens)

    def gated_residual(self, x: torch.Tensor, gate: torch.Tensor, branch: torch.Tensor) -> torch.Tensor:
        """x + drop_path(gate * branch); one fused pass when no path is dropped. gate: (B, 1, D)."""
        if self.drop_path.p > 0 and self.training:
            return x + self.drop_path(gate * branch)
        return torch.addcmul(x, gate, branch)


class T2IFinalLayer(nn.Module):
    """Final adaLN-single modulation (driven by t, not t0) and the linear map back to patches."""

    def __init__(self, hidden_size: int, patch_size: int, out_channels: int):
        super().__init__()
        self.norm_final = nn.LayerNorm(hidden_size, elementwise_affine=False, eps=1e-6)
        self.linear = Linear(hidden_size, patch_size * patch_size * out_channels)
        self.scale_shift_table = nn.Parameter(torch.randn(2, hidden_size) / hidden_size**0.5)

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """x: (B, N, D), t: (B, D) -> (B, N, p*p*C_out)."""
        shift, scale = (self.scale_shift_table[None] + t[:, None]).chunk(2, dim=1)
        return self.linear(modulate(self.norm_final(x), shift, scale))
