"""PixArt-alpha / PixArt-Sigma Diffusion Transformer: ``PixArt`` (fixed resolution) and ``PixArtMS`` (multi-scale).

PixArt-alpha §2.3 / PixArt-delta §2: adaLN-single conditioning, cross-attention to T5 caption features, learned-sigma
output. Parameter names and shapes equal the official checkpoints (``PixArt-XL-2-*.pth``, ``PixArt-Sigma-XL-2-*.pth``),
so they load with ``load_state_dict`` directly; the position table is recomputed for every latent size and never
stored.

PixArt-Sigma (arXiv 2403.04692) is the same network with keyword arguments, as the official Σ code extends α's:
``model_max_length=300`` (T5 tokens), ``pe_interpolation`` 0.5 / 1 / 2 / 4 at 256 / 512 / 1024 / 2K px (α's
``lewei_scale``), ``PixArtMS(micro_condition=False)`` (no size / aspect-ratio embedders), ``qk_norm`` and
``kv_compress_config`` (self-attention options of the blocks, ``diffusion/model/attention.py``).

One speed-up over a literal port: caption tokens that are padding for *every* sample of the batch are sliced away
before the caption projection, so cross-attention costs the batch's longest caption instead of ``model_max_length``
(the output is unchanged: padded tokens are masked out of attention anyway). Sampling goes one step further:
:meth:`PixArt.encode_caption` runs the caption projection and every block's cross-attention K/V projection once per
prompt batch, and ``forward(..., caption=...)`` reuses them at every step (they depend on neither x nor t).
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from diffusion.model.attention import kv_compress_plan
from diffusion.model.blocks import PixArtBlock, T2IFinalLayer
from diffusion.model.embeddings import (
    CaptionEmbedder,
    EncodedCaption,
    PatchEmbed,
    SizeEmbedder,
    TimestepEmbedder,
    sincos_pos_embed,
    trim_caption_padding,
)
from diffusion.model.onednn import Linear
from diffusion.registry import MODELS

Embedded = tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor | None]
__all__ = ["EncodedCaption", "PixArt", "PixArtMS", "trim_caption_padding"]


@MODELS.register_module()
class PixArt(nn.Module):
    """PixArt-alpha / Sigma transformer at a fixed base resolution (position table rebuilt for any H x W).

    forward(x (B,C,H,W), timestep (B,), y (B,1,L,C_text), mask (B,L) 0/1 | None, data_info ignored)
    -> (B, 2C, H, W) when ``pred_sigma`` (eps ‖ variance value), else (B, C, H, W).

    PixArt-Sigma options: ``qk_norm`` (LayerNorm of the full q and k in self-attention) and ``kv_compress_config``
    (``dict(sampling='conv', scale_factor=2, kv_compress_layer=[14, ..., 27])``: keys and values of those blocks'
    self-attention compressed on the token grid); both off for PixArt-alpha and every released Σ checkpoint.
    """

    use_micro_conditions = False

    def __init__(
        self,
        input_size: int = 32,
        patch_size: int = 2,
        in_channels: int = 4,
        hidden_size: int = 1152,
        depth: int = 28,
        num_heads: int = 16,
        mlp_ratio: float = 4.0,
        class_dropout_prob: float = 0.1,
        pred_sigma: bool = True,
        drop_path: float = 0.0,
        caption_channels: int = 4096,
        model_max_length: int = 120,
        pe_interpolation: float = 1.0,
        grad_checkpointing: bool = False,
        guidance_embedding: bool = False,
        qk_norm: bool = False,
        kv_compress_config: Mapping | None = None,
    ):
        super().__init__()
        if hidden_size % num_heads:
            raise ValueError(f"hidden_size {hidden_size} is not divisible by num_heads {num_heads}")
        self.input_size = input_size
        self.patch_size = patch_size
        self.in_channels = in_channels
        self.out_channels = in_channels * 2 if pred_sigma else in_channels
        self.pred_sigma = pred_sigma
        self.hidden_size = hidden_size
        self.caption_channels = caption_channels
        self.model_max_length = model_max_length
        self.pe_interpolation = pe_interpolation
        self.base_size = input_size // patch_size
        self.grad_checkpointing = grad_checkpointing
        self.qk_norm = qk_norm
        plan = kv_compress_plan(kv_compress_config, depth)  # (sampling, sr) per block
        self.kv_compress_config = dict(kv_compress_config) if any(sr > 1 for _, sr in plan) else None

        self.x_embedder = PatchEmbed(patch_size, in_channels, hidden_size)
        self.t_embedder = TimestepEmbedder(hidden_size)
        self.t_block = nn.Sequential(nn.SiLU(), Linear(hidden_size, 6 * hidden_size))
        self.y_embedder = CaptionEmbedder(caption_channels, hidden_size, model_max_length, class_dropout_prob)
        self.build_condition_embedders()
        # LCM's w-embedding (a variant PixArt-delta compares against; off for the paper's fixed-w student).
        self.w_embedder = TimestepEmbedder(hidden_size) if guidance_embedding else None
        rates = [drop_path * i / max(depth - 1, 1) for i in range(depth)]  # stochastic depth grows with depth
        self.blocks = nn.ModuleList(
            PixArtBlock(hidden_size, num_heads, mlp_ratio, rates[i], qk_norm, *plan[i]) for i in range(depth)
        )
        self.final_layer = T2IFinalLayer(hidden_size, patch_size, self.out_channels)
        self.initialize_weights()

    # ----------------------------------------------------------------------------------------------- init
    def initialize_weights(self) -> None:
        """Official init: xavier linears, N(0, 0.02) embedder MLPs, zero cross-attention output and final linear."""
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight)
                nn.init.zeros_(m.bias)
        w = self.x_embedder.proj.weight
        nn.init.xavier_uniform_(w.view(w.shape[0], -1))
        nn.init.zeros_(self.x_embedder.proj.bias)
        for lin in (*self._embedder_linears(), self.y_embedder.y_proj.fc1, self.y_embedder.y_proj.fc2):
            nn.init.normal_(lin.weight, std=0.02)
        nn.init.normal_(self.t_block[1].weight, std=0.02)
        for block in self.blocks:
            nn.init.zeros_(block.cross_attn.proj.weight)
            nn.init.zeros_(block.cross_attn.proj.bias)
        nn.init.zeros_(self.final_layer.linear.weight)
        nn.init.zeros_(self.final_layer.linear.bias)
        if self.w_embedder is not None:  # zero output: a student with a w-embedding starts equal to its teacher
            nn.init.zeros_(self.w_embedder.mlp[2].weight)
            nn.init.zeros_(self.w_embedder.mlp[2].bias)

    def build_condition_embedders(self) -> None:
        """Hook for extra conditioning embedders (PixArtMS's micro-conditions); none at fixed resolution."""

    def _embedder_linears(self) -> list[nn.Linear]:
        return [self.t_embedder.mlp[0], self.t_embedder.mlp[2]]

    # ----------------------------------------------------------------------------------------------- forward
    def pos_embed(self, grid_h: int, grid_w: int, like: torch.Tensor) -> torch.Tensor:
        """(1, grid_h * grid_w, D) sin-cos table for this latent grid."""
        table = sincos_pos_embed(self.hidden_size, grid_h, grid_w, self.pe_interpolation, self.base_size)
        return table[None].to(device=like.device, dtype=like.dtype)

    def embed_conditions(self, timestep: torch.Tensor, batch_size: int, data_info: Mapping | None) -> torch.Tensor:
        """Timestep (and, for PixArtMS, micro-condition) embedding t, (B, D)."""
        if timestep.ndim == 0:
            timestep = timestep.expand(batch_size)
        t = self.t_embedder(timestep)
        if self.w_embedder is not None and data_info is not None and "guidance" in data_info:
            t = t + self.w_embedder(data_info["guidance"].reshape(batch_size) * 1000)  # LCM embeds 1000 w
        return t

    def embed(
        self,
        x: torch.Tensor,
        timestep: torch.Tensor,
        y: torch.Tensor | None,
        mask: torch.Tensor | None = None,
        data_info: Mapping | None = None,
    ) -> Embedded:
        """Everything before the blocks: tokens (B,N,D), t (B,D), t0 (B,6D), caption tokens (B,L',D), mask."""
        if x.ndim != 4 or x.shape[1] != self.in_channels:
            raise ValueError(f"x must be (B, {self.in_channels}, H, W), got {tuple(x.shape)}")
        if y is not None and (y.ndim != 4 or y.shape[0] != x.shape[0] or y.shape[-1] != self.caption_channels):
            raise ValueError(f"y must be (B, 1, L, {self.caption_channels}) with B={x.shape[0]}, got {tuple(y.shape)}")
        h, w = x.shape[-2] // self.patch_size, x.shape[-1] // self.patch_size
        tokens = self.x_embedder(x)
        tokens = tokens + self.pos_embed(h, w, tokens)  # (B, N, D)
        t = self.embed_conditions(timestep.to(x.device), x.shape[0], data_info)  # (B, D)
        t0 = self.t_block(t)  # (B, 6D)
        if y is None:  # the caption comes pre-encoded (``forward(..., caption=...)``)
            return tokens, t, t0, None, None
        if self.training and self.y_embedder.uncond_prob > 0:
            y = self.y_embedder.drop(y)  # before trimming: the null caption spans all L positions
        y, attn_mask = trim_caption_padding(y, mask)
        y_tokens = self.y_embedder.y_proj(y.squeeze(1).to(tokens.dtype))  # (B, L', D)
        return tokens, t, t0, y_tokens, attn_mask

    @torch.no_grad()
    def encode_caption(self, y: torch.Tensor, mask: torch.Tensor | None = None) -> EncodedCaption:
        """The caption's share of every step, computed once: y (B,1,L,C_text), mask (B,L) -> :class:`EncodedCaption`.

        For sampling (no caption dropout, no gradient): pass the result as ``forward(..., caption=...)``.
        """
        if y.ndim != 4 or y.shape[-1] != self.caption_channels:
            raise ValueError(f"y must be (B, 1, L, {self.caption_channels}), got {tuple(y.shape)}")
        y, attn_mask = trim_caption_padding(y, mask)
        dtype = self.y_embedder.y_proj.fc1.weight.dtype
        tokens = self.y_embedder.y_proj(y.squeeze(1).to(dtype))  # (B, L', D)
        return EncodedCaption(tokens, attn_mask, [block.caption_kv(tokens) for block in self.blocks])

    def run_block(
        self,
        index: int,
        x: torch.Tensor,
        y: torch.Tensor,
        t0: torch.Tensor,
        mask,
        kv: torch.Tensor | None = None,
        hw: tuple[int, int] | None = None,
    ) -> torch.Tensor:
        """Block ``index`` on tokens x (B, N, D) of the (h, w) grid ``hw``, under gradient checkpointing if set."""
        block = self.blocks[index]
        if self.grad_checkpointing and self.training and torch.is_grad_enabled():
            return checkpoint(block, x, y, t0, mask, kv, hw, use_reentrant=False)
        return block(x, y, t0, mask, kv, hw)

    def token_grid(self, x: torch.Tensor) -> tuple[int, int]:
        """The (h, w) token grid of a latent x (B, C, H, W)."""
        return x.shape[-2] // self.patch_size, x.shape[-1] // self.patch_size

    def head(self, tokens: torch.Tensor, t: torch.Tensor, height: int, width: int) -> torch.Tensor:
        """Final layer + unpatchify: (B, N, D) -> (B, C_out, H, W)."""
        p, c = self.patch_size, self.out_channels
        out = self.final_layer(tokens, t)  # (B, N, p*p*C)
        h, w = height // p, width // p
        out = out.reshape(out.shape[0], h, w, p, p, c)
        return torch.einsum("nhwpqc->nchpwq", out).reshape(out.shape[0], c, h * p, w * p)

    def forward(
        self,
        x: torch.Tensor,
        timestep: torch.Tensor,
        y: torch.Tensor,
        mask: torch.Tensor | None = None,
        data_info: Mapping | None = None,
        caption: EncodedCaption | None = None,
    ) -> torch.Tensor:
        """``caption``: :meth:`encode_caption` of (y, mask) computed once per prompt batch; y and mask are then
        ignored (pass None) and no caption projection runs in this call."""
        if caption is not None:
            if caption.tokens.shape[0] != x.shape[0]:
                raise ValueError(f"caption batch {caption.tokens.shape[0]} != x batch {x.shape[0]}")
            tokens, t, t0, _, _ = self.embed(x, timestep, None, None, data_info)
            for i in range(len(self.blocks)):
                tokens = self.run_block(i, tokens, None, t0, caption.attn_mask, caption.kv[i], self.token_grid(x))
            return self.head(tokens, t, x.shape[-2], x.shape[-1])
        tokens, t, t0, y_tokens, attn_mask = self.embed(x, timestep, y, mask, data_info)
        for i in range(len(self.blocks)):
            tokens = self.run_block(i, tokens, y_tokens, t0, attn_mask, None, self.token_grid(x))
        return self.head(tokens, t, x.shape[-2], x.shape[-1])

    # ----------------------------------------------------------------------------------------------- checkpoints
    def load_state_dict(self, state_dict: Mapping[str, torch.Tensor], strict: bool = True, assign: bool = False):
        """Official checkpoints carry a ``pos_embed`` buffer; it is recomputed here, so it is dropped on load.

        Every other key must match (with ``strict``): a missing or unexpected key raises an error naming it. Two
        exceptions start from their initialisation instead: a w-embedding missing from the checkpoint (LCM student
        initialised from its teacher) and the ``conv`` KV-compression weights (``blocks.N.attn.sr.*`` /
        ``blocks.N.attn.norm.*``) missing from a checkpoint of an uncompressed model (the official Σ kv-compress
        recipe fine-tunes a released checkpoint): those are reset to the mean-pool init, with a warning naming them.
        """
        state_dict = {k: v for k, v in state_dict.items() if k != "pos_embed" and not k.endswith(".pos_embed")}
        if self.w_embedder is not None and not any(k.startswith("w_embedder.") for k in state_dict):
            # A teacher checkpoint has no w-embedding: the student keeps its zero-initialised one.
            state_dict.update({f"w_embedder.{k}": v for k, v in self.w_embedder.state_dict().items()})
        state_dict.update(self._initial_compression(state_dict))
        return super().load_state_dict(state_dict, strict=strict, assign=assign)

    def _initial_compression(self, state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """The mean-pool init of every compressing block whose ``sr``/``norm`` weights ``state_dict`` lacks
        entirely (warns naming them); a block with only some of them stays an error of ``load_state_dict``."""
        filled = []
        for i, block in enumerate(self.blocks):
            keys = [f"blocks.{i}.attn.{k}" for k in block.attn.compression_keys()]
            if keys and not any(k in state_dict for k in keys):
                block.attn.reset_compression()
                filled += keys
        if not filled:
            return {}
        warnings.warn(
            f"the checkpoint has no KV-compression weights for {sorted(filled)}: they start from their mean-pool "
            "initialisation (depthwise conv 1/sr², default LayerNorm), as expected when an uncompressed checkpoint "
            "is fine-tuned into a KV-compressed model (the official Sigma kv-compress recipe)",
            stacklevel=3,
        )
        own = self.state_dict()
        return {k: own[k] for k in filled}


def _parse_micro_condition(value, batch_size: int, width: int, name: str, device) -> torch.Tensor:
    v = torch.as_tensor(value, dtype=torch.float32, device=device)
    if v.ndim == 0 and width == 1:
        v = v.reshape(1, 1)
    if v.ndim == 1 and v.shape[0] == width:
        v = v[None]
    elif v.ndim == 1 and width == 1 and v.shape[0] == batch_size:
        v = v[:, None]
    if v.ndim != 2 or v.shape[1] != width or v.shape[0] not in (1, batch_size):
        raise ValueError(f"data_info['{name}'] must be (B, {width}) with B={batch_size}, got {tuple(v.shape)}")
    return v.expand(batch_size, width)


@MODELS.register_module()
class PixArtMS(PixArt):
    """Multi-scale PixArt: adds micro-conditions on the original image size (h, w) and the aspect ratio (h/w).

    ``data_info = {'img_hw': (B, 2), 'aspect_ratio': (B, 1)}`` is required; (1, 2) / (1, 1) broadcast over the batch.
    ``micro_condition=False`` (PixArt-Sigma): no size / aspect-ratio embedders, no data_info needed, and no
    constraint on ``hidden_size``; the network is then the same as ``PixArt``'s (the Σ multi-scale checkpoints).
    """

    use_micro_conditions = True

    def __init__(self, *args, hidden_size: int = 1152, micro_condition: bool = True, **kwargs):
        if micro_condition and hidden_size % 3:
            raise ValueError(
                f"PixArtMS needs hidden_size divisible by 3 (size embedders are D/3 wide), got {hidden_size}; "
                "or micro_condition=False"
            )
        # read by build_condition_embedders during PixArt.__init__ (a plain attribute may be set before it)
        self.use_micro_conditions = micro_condition
        super().__init__(*args, hidden_size=hidden_size, **kwargs)

    def build_condition_embedders(self) -> None:
        if self.use_micro_conditions:
            self.csize_embedder = SizeEmbedder(self.hidden_size // 3)
            self.ar_embedder = SizeEmbedder(self.hidden_size // 3)

    def _embedder_linears(self) -> list[nn.Linear]:
        if not self.use_micro_conditions:
            return super()._embedder_linears()
        emb = [self.csize_embedder, self.ar_embedder]
        return super()._embedder_linears() + [e.mlp[i] for e in emb for i in (0, 2)]

    def embed_conditions(self, timestep: torch.Tensor, batch_size: int, data_info: Mapping | None) -> torch.Tensor:
        if not self.use_micro_conditions:
            return super().embed_conditions(timestep, batch_size, data_info)
        if not data_info or "img_hw" not in data_info or "aspect_ratio" not in data_info:
            raise ValueError("PixArtMS needs data_info={'img_hw': (B,2), 'aspect_ratio': (B,1)}")
        t = super().embed_conditions(timestep, batch_size, data_info)
        hw = _parse_micro_condition(data_info["img_hw"], batch_size, 2, "img_hw", t.device)
        ar = _parse_micro_condition(data_info["aspect_ratio"], batch_size, 1, "aspect_ratio", t.device)
        return t + torch.cat([self.csize_embedder(hw), self.ar_embedder(ar)], dim=1)
