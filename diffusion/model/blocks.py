"""The PixArt-alpha transformer block and output layer (PixArt-alpha §2.3, Fig. 4).

Each block: adaLN-single-modulated self-attention, un-modulated cross-attention to the caption tokens, and a
modulated MLP. The six modulation vectors come from one shared ``t_block`` projection plus a per-block learned
``scale_shift_table``. Attention goes through ``F.scaled_dot_product_attention``; linears through
``diffusion.model.onednn`` (oneDNN in fp32 CPU inference); the modulation and the gated residuals are one fused
multiply-add each (``torch.addcmul``) instead of a multiply and an add.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from diffusion.model.embeddings import Mlp
from diffusion.model.onednn import Linear


def modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """x * (1 + scale) + shift in one pass; x: (B, N, D); shift, scale: (B, 1, D)."""
    return torch.addcmul(shift, x, 1 + scale)


class SelfAttention(nn.Module):
    """Multi-head self-attention with a fused ``qkv`` projection (official key names)."""

    def __init__(self, hidden_size: int, num_heads: int):
        super().__init__()
        self.num_heads = num_heads
        self.qkv = Linear(hidden_size, 3 * hidden_size)
        self.proj = Linear(hidden_size, hidden_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, d = x.shape
        qkv = self.qkv(x).reshape(b, n, 3, self.num_heads, d // self.num_heads).permute(2, 0, 3, 1, 4)  # (3,B,h,N,dh)
        out = F.scaled_dot_product_attention(qkv[0], qkv[1], qkv[2])  # (B, h, N, dh)
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
    ``kv`` (2,B,h,L,dh): the cross-attention keys/values of ``y`` computed once for all sampling steps."""

    def __init__(self, hidden_size: int, num_heads: int, mlp_ratio: float = 4.0, drop_path: float = 0.0):
        super().__init__()
        self.norm1 = nn.LayerNorm(hidden_size, elementwise_affine=False, eps=1e-6)
        self.attn = SelfAttention(hidden_size, num_heads)
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
    ) -> torch.Tensor:
        b, _, d = x.shape
        mod = self.scale_shift_table[None] + t0.reshape(b, 6, d)  # (B, 6, D)
        shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp = mod.chunk(6, dim=1)  # (B, 1, D) each
        x = self.gated_residual(x, gate_msa, self.attn(modulate(self.norm1(x), shift_msa, scale_msa)))
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
