"""PixArt-delta's ControlNet-Transformer (arXiv 2401.05252 §4) and the ControlNet-UNet baseline it compares to (§4.2).

Both wrap an already-built, frozen ``PixArt`` / ``PixArtMS`` (the base) and reuse its ``embed``, blocks and ``head``;
only trainable copies of the first N base blocks and zero-initialised ``Linear(H, H)`` projections are added.

ControlNet-Transformer (the official ``ControlPixArtHalf``, what the released ``PixArt-XL-2-*-ControlNet.pth`` were
trained with): the control latent ``c`` goes through the base's own patch embedding plus the position table of its
grid; base block 0 runs on ``x``; copy 0 takes (base block 0's output + ``before_proj(c)``), copy i >= 1 takes copy
i-1's output, and ``after_proj_i(copy i)`` is added to the hidden state entering base block i+1. Blocks after N and the
final layer see no control.

ControlNet-UNet baseline: the first depth // 2 blocks play the encoder; copy i mirrors base block i and runs on
(embedded x + ``before_proj(c)``) for i = 0, on copy i-1's output after; ``after_proj_i(copy i)`` is added to the input
of the mirrored decoder block depth-1-i, as a UNet skip connection.

State dict (official layout): ``base_model.*``, ``controlnet.{i}.copied_block.*``, ``controlnet.0.before_proj.*``,
``controlnet.{i}.after_proj.*``.

Sampling fast path, as the plain model's: :meth:`encode_caption` projects the caption once per prompt batch and
computes the cross-attention K/V of every base block *and of every copy* (a copy has cross-attention weights of its
own), and ``forward(..., caption=...)`` reuses them at every step.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from dataclasses import dataclass

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from diffusion.model.onednn import Linear
from diffusion.model.pixart import EncodedCaption, PixArt
from diffusion.registry import MODELS

BASE_PREFIX, CONTROL_PREFIX = "base_model.", "controlnet."


@dataclass
class ControlCaption(EncodedCaption):
    """:class:`EncodedCaption` of the base plus the cross-attention K/V (2, B, h, L', dh) of each trainable copy."""

    copy_kv: list[torch.Tensor]


def zero_linear(width: int) -> nn.Linear:
    """A Linear(width, width) whose output is 0 at initialisation: the control starts as a no-op."""
    linear = Linear(width, width)
    nn.init.zeros_(linear.weight)
    nn.init.zeros_(linear.bias)
    return linear


class ControlBlock(nn.Module):
    """A trainable copy of one base block with its zero projections (official ``ControlT2IDitBlockHalf``).

    forward(x (B,N,D) | None, y (B,L,D) | None, t0 (B,6D), mask, c (B,N,D), kv, hw) -> (c_out (B,N,D), skip (B,N,D));
    copy 0 (``first``) runs on ``x + before_proj(c)``, later copies on the previous copy's output ``c``; ``kv``: the
    copy's cross-attention K/V computed beforehand (then ``y`` is not used); ``hw``: the (h, w) token grid. The copy
    is a deep copy of its base block, so it carries that block's PixArt-Sigma options (qk-norm, KV compression).
    """

    def __init__(self, block: nn.Module, width: int, first: bool):
        super().__init__()
        self.copied_block = copy.deepcopy(block).requires_grad_(True)
        self.before_proj = zero_linear(width) if first else None
        self.after_proj = zero_linear(width)

    def forward(
        self,
        x: torch.Tensor | None,
        y: torch.Tensor | None,
        t0: torch.Tensor,
        mask: torch.Tensor | None,
        c: torch.Tensor,
        kv: torch.Tensor | None = None,
        hw: tuple[int, int] | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        if self.before_proj is not None:
            c = x + self.before_proj(c)
        c = self.copied_block(c, y, t0, mask, kv, hw)
        return c, self.after_proj(c)


class _ControlWrapper(nn.Module):
    """What both topologies share: the frozen base in eval mode, the copies, control embedding, loading."""

    accepts_control = True  # the pipeline passes ``c=`` only to models that declare it

    def __init__(self, base_model: PixArt, copy_blocks: int, max_blocks: int):
        super().__init__()
        if not isinstance(base_model, PixArt):
            raise TypeError(f"base_model must be a PixArt / PixArtMS, got {type(base_model).__name__}")
        depth = len(base_model.blocks)
        if not 1 <= copy_blocks <= max_blocks:
            raise ValueError(
                f"copy_blocks must be in [1, {max_blocks}] for a base of depth {depth}, got {copy_blocks}"
            )
        self.base_model = base_model.requires_grad_(False).eval()
        self.copy_blocks = copy_blocks
        self.controlnet = nn.ModuleList(
            ControlBlock(base_model.blocks[i], base_model.hidden_size, first=i == 0) for i in range(copy_blocks)
        )

    # Read-only views of the base that samplers and methods need (explicit, no attribute forwarding).
    @property
    def in_channels(self) -> int:
        return self.base_model.in_channels

    @property
    def out_channels(self) -> int:
        return self.base_model.out_channels

    @property
    def patch_size(self) -> int:
        return self.base_model.patch_size

    @property
    def pred_sigma(self) -> bool:
        return self.base_model.pred_sigma

    @property
    def use_micro_conditions(self) -> bool:
        return self.base_model.use_micro_conditions

    @property
    def y_embedder(self) -> nn.Module:
        return self.base_model.y_embedder

    @property
    def w_embedder(self) -> nn.Module | None:
        """The base's w-embedding (a w-embedding LCM student under a ControlNet is sampled at its guidance)."""
        return self.base_model.w_embedder

    @property
    def fsdp_wrap_modules(self) -> list[nn.Module]:
        """FSDP2 units (``train.parallel='fsdp'``): every block of the base and every copy, each sharded on its own;
        the rest (embedders, final layer, zero projections) goes with the root."""
        return [*self.base_model.blocks, *(control.copied_block for control in self.controlnet)]

    def train(self, mode: bool = True) -> _ControlWrapper:
        """The copies follow ``mode``; the frozen base always stays in eval mode (no dropout of its own)."""
        super().train(mode)
        self.base_model.eval()
        return self

    def reset_copies(self) -> None:
        """Copies := the base's blocks they mirror, projections := 0 (after loading a plain base checkpoint)."""
        for i, control in enumerate(self.controlnet):
            control.copied_block.load_state_dict(self.base_model.blocks[i].state_dict())
            for proj in (control.before_proj, control.after_proj):
                if proj is not None:
                    nn.init.zeros_(proj.weight)
                    nn.init.zeros_(proj.bias)

    @property
    def ignores_control(self) -> bool:
        """True when the control cannot change the output: the zero projection where ``c`` enters (copy 0's
        ``before_proj``) or every one where the copies leave (``after_proj``) is still all zero, as after loading a
        plain base file with no trained ControlNet weights."""
        enters = self.controlnet[0].before_proj
        leave = [control.after_proj for control in self.controlnet]
        return not any(p.any() for p in enters.parameters()) or not any(p.any() for m in leave for p in m.parameters())

    # ----------------------------------------------------------------------------------------------- forward
    def _call(self, module: nn.Module, *args):
        """Gradient checkpointing (the base's constructor flag) in the wrapper's training mode."""
        if self.base_model.grad_checkpointing and self.training and torch.is_grad_enabled():
            return checkpoint(module, *args, use_reentrant=False)
        return module(*args)

    def embed_control(self, c: torch.Tensor, x: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        """(1 | B, C, H, W) control latent -> (B, N, D) tokens via the base's patch embedding and position table."""
        base = self.base_model
        if c.ndim != 4 or c.shape[1] != base.in_channels or c.shape[-2:] != x.shape[-2:]:
            raise ValueError(
                f"control c must be (B, {base.in_channels}, {x.shape[-2]}, {x.shape[-1]}), got {tuple(c.shape)}"
            )
        if c.shape[0] not in (1, x.shape[0]):
            raise ValueError(f"control c has batch {c.shape[0]}; expected 1 or {x.shape[0]}")
        tokens = base.x_embedder(c.to(like.dtype))
        tokens = tokens + base.pos_embed(c.shape[-2] // base.patch_size, c.shape[-1] // base.patch_size, tokens)
        return tokens.expand(x.shape[0], -1, -1)

    @torch.no_grad()
    def encode_caption(self, y: torch.Tensor, mask: torch.Tensor | None = None) -> ControlCaption:
        """The caption's share of every step, once per prompt batch: the base's :meth:`PixArt.encode_caption` plus
        each copy's cross-attention K/V. y (B,1,L,C_text), mask (B,L) -> :class:`ControlCaption` (sampling only)."""
        caption = self.base_model.encode_caption(y, mask)
        copy_kv = [control.copied_block.caption_kv(caption.tokens) for control in self.controlnet]
        return ControlCaption(caption.tokens, caption.attn_mask, caption.kv, copy_kv)

    def forward(
        self,
        x: torch.Tensor,
        timestep: torch.Tensor,
        y: torch.Tensor | None,
        mask: torch.Tensor | None = None,
        data_info: Mapping | None = None,
        c: torch.Tensor | None = None,
        caption: ControlCaption | None = None,
    ) -> torch.Tensor:
        """The base's forward plus the control latent ``c`` (already x the codec scale factor; None = no control).

        x: (B, C, H, W); timestep: (B,); y: (B, 1, L, C_text); mask: (B, L) | None; c: (B | 1, C, H, W) | None;
        ``caption``: :meth:`encode_caption` of (y, mask) computed once per prompt batch (y and mask are then ignored).
        Returns (B, C_out, H, W), exactly the base's output when ``c`` is None.
        """
        base = self.base_model
        if caption is not None:
            if caption.tokens.shape[0] != x.shape[0]:
                raise ValueError(f"caption batch {caption.tokens.shape[0]} != x batch {x.shape[0]}")
            tokens, t, t0, _, _ = base.embed(x, timestep, None, None, data_info)
            y_tokens, attn_mask = None, caption.attn_mask
        else:
            if self.training and base.y_embedder.uncond_prob > 0:
                y = base.y_embedder.drop(y)  # the base is in eval mode, so its own embed does not drop captions
            tokens, t, t0, y_tokens, attn_mask = base.embed(x, timestep, y, mask, data_info)
        c_tokens = None if c is None else self.embed_control(c, x, tokens)
        tokens = self.run_blocks(tokens, y_tokens, t0, attn_mask, c_tokens, caption, base.token_grid(x))
        return base.head(tokens, t, x.shape[-2], x.shape[-1])

    def _kv(self, caption: ControlCaption | None) -> tuple[list, list]:
        """Per base block and per copy: the precomputed cross-attention K/V, or None (computed from y in the block)."""
        if caption is None:
            return [None] * len(self.base_model.blocks), [None] * self.copy_blocks
        return caption.kv, caption.copy_kv

    def run_blocks(self, x, y, t0, mask, c, caption: ControlCaption | None = None, hw=None) -> torch.Tensor:
        raise NotImplementedError

    # ----------------------------------------------------------------------------------------------- checkpoints
    def trainable_state_dict(self) -> dict[str, torch.Tensor]:
        """The copies and zero projections only (``controlnet.*``): what a training checkpoint needs."""
        return {k: v for k, v in self.state_dict().items() if k.startswith(CONTROL_PREFIX)}

    def load_state_dict(self, state_dict: Mapping[str, torch.Tensor], strict: bool = True, assign: bool = False):
        """Three kinds of state dict:

        - the official layout (``base_model.*`` + ``controlnet.*``; ``base_model.pos_embed`` is dropped, as the
          position table is recomputed): loaded as is;
        - a plain PixArt-alpha state dict (no prefix): loaded into the base, then the copies are re-initialised from
          the loaded base blocks and the projections zeroed (a fresh ControlNet on that base);
        - ``controlnet.*`` only (a training checkpoint of the trainable weights): loaded into the copies with
          ``strict`` applying to them alone; the base keeps its weights.
        """
        keys = list(state_dict)
        if not any(k.startswith((BASE_PREFIX, CONTROL_PREFIX)) for k in keys):
            result = self.base_model.load_state_dict(state_dict, strict=strict, assign=assign)
            self.reset_copies()
            return result
        state = {k: v for k, v in state_dict.items() if not (k.startswith(BASE_PREFIX) and k.endswith("pos_embed"))}
        if not any(k.startswith(BASE_PREFIX) for k in keys):
            result = self.controlnet.load_state_dict(
                {k[len(CONTROL_PREFIX) :]: v for k, v in state.items() if k.startswith(CONTROL_PREFIX)},
                strict=False,
                assign=assign,
            )
            unexpected = [k for k in state if not k.startswith(CONTROL_PREFIX)] + list(result.unexpected_keys)
            missing = [CONTROL_PREFIX + k for k in result.missing_keys]
            if strict and (missing or unexpected):
                raise KeyError(f"ControlNet weights: missing keys {missing}, unexpected keys {unexpected}")
            return torch.nn.modules.module._IncompatibleKeys(missing, unexpected)
        return super().load_state_dict(state, strict=strict, assign=assign)


@MODELS.register_module()
class PixArtControlNet(_ControlWrapper):
    """ControlNet-Transformer around ``base_model`` with ``copy_blocks`` (N) trainable copies, 1 <= N <= depth - 1.

    forward(x, timestep, y, mask=None, data_info=None, c=None) -> (B, C_out, H, W); see the module docstring.
    """

    def __init__(self, base_model: PixArt, copy_blocks: int = 13):
        super().__init__(base_model, copy_blocks, max_blocks=len(base_model.blocks) - 1)

    def run_blocks(self, x, y, t0, mask, c, caption: ControlCaption | None = None, hw=None) -> torch.Tensor:
        """x: (B,N,D) after the base's embedding; c: (B,N,D) control tokens or None; hw: the (h, w) token grid."""
        blocks = self.base_model.blocks
        kv, copy_kv = self._kv(caption)
        x = self._call(blocks[0], x, y, t0, mask, kv[0], hw)
        for index in range(1, len(blocks)):
            if c is not None and index <= self.copy_blocks:
                c, skip = self._call(self.controlnet[index - 1], x, y, t0, mask, c, copy_kv[index - 1], hw)
                x = x + skip
            x = self._call(blocks[index], x, y, t0, mask, kv[index], hw)
        return x


@MODELS.register_module()
class PixArtControlNetUNet(_ControlWrapper):
    """ControlNet-UNet baseline (§4.2): copies of the first ``copy_blocks`` (default depth // 2) blocks as encoder,
    copy i's zero-linear output added to the input of base block depth-1-i."""

    def __init__(self, base_model: PixArt, copy_blocks: int | None = None):
        half = len(base_model.blocks) // 2
        super().__init__(base_model, half if copy_blocks is None else copy_blocks, max_blocks=half)

    def run_blocks(self, x, y, t0, mask, c, caption: ControlCaption | None = None, hw=None) -> torch.Tensor:
        blocks, depth = self.base_model.blocks, len(self.base_model.blocks)
        kv, copy_kv = self._kv(caption)
        skips = {}
        if c is not None:
            for i, control in enumerate(self.controlnet):
                c, skips[depth - 1 - i] = self._call(control, x, y, t0, mask, c, copy_kv[i], hw)
        for index in range(depth):
            if index in skips:
                x = x + skips[index]
            x = self._call(blocks[index], x, y, t0, mask, kv[index], hw)
        return x


TOPOLOGIES = {"transformer": PixArtControlNet, "unet": PixArtControlNetUNet}


def wrap_controlnet(
    base_model: PixArt, topology: str = "transformer", copy_blocks: int | None = 13
) -> _ControlWrapper:
    """The ControlNet of ``topology`` ('transformer' | 'unet') around ``base_model`` (the config's ``controlnet``)."""
    if topology not in TOPOLOGIES:
        raise ValueError(f"unknown controlnet topology {topology!r}; expected one of {sorted(TOPOLOGIES)}")
    if topology == "transformer" and copy_blocks is None:
        copy_blocks = 13
    return TOPOLOGIES[topology](base_model, copy_blocks)
