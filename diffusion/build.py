"""The one way in: a config (and a checkpoint) -> the network -> a sampling pipeline.

The trainer, every tool (sample, eval_fid, demo, reproduce_*, benchmarks) and the web app build what they run through
these functions, so each kind of checkpoint a run produces (a PixArt-alpha teacher, a full PixArt-delta LCM student,
an LCM-LoRA or w-embedding student, a ControlNet) is taught to exactly one place: :func:`load_model`. The sampler
defaults live in one table, ``diffusion.pipeline.SAMPLER_DEFAULTS``.

    cfg = Config.fromfile("configs/lcm/tiny_lcm.py")
    teacher = load_pipeline(cfg)                                  # cfg.load_from's weights (the teacher)
    student = load_pipeline(cfg, "output/demo/lcm/checkpoints/step_0000300", like=teacher)  # shares T5 and codec
    images = student(["a red circle"], name="lcm", steps=4)      # uint8 (1, 3, H, W)
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import torch
from torch import nn

from diffusion.data.text_encoder import TextEncoder
from diffusion.model.io import load_model_weights, resolve_checkpoint
from diffusion.pipeline import Pipeline
from diffusion.registry import CODECS, MODELS

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def build_model(cfg: Mapping, load_from: bool = True) -> nn.Module:
    """``cfg.model`` as built for training, holding ``cfg.load_from``'s weights when ``load_from`` and the key is set.

    This is what the trainer starts from (the teacher weights of an LCM or ControlNet run).
    """
    model = MODELS.build(dict(cfg["model"]))
    if load_from and cfg.get("load_from"):
        load_model_weights(model, cfg["load_from"])
    return model


def load_model(
    cfg: Mapping,
    checkpoint: str | Path | None = None,
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
    use_ema: bool = True,
) -> nn.Module:
    """The network a run of ``cfg`` produced, ready to sample: eval mode, frozen, on ``device`` in ``dtype``.

    Args:
        cfg: the run's config (``model``, ``load_from``).
        checkpoint: a weights file (``.safetensors`` / official ``.pth``), a diffusers transformer folder or a trainer
            step folder (its ``ema.safetensors`` when ``use_ema`` and present, else ``model.safetensors``). None:
            ``cfg.load_from`` (for an LCM config, that is its teacher).
        use_ema: for a trainer step folder, prefer the EMA weights.
    """
    if checkpoint is None:
        if not cfg.get("load_from"):
            raise ValueError("no checkpoint given and the config has no load_from")
        model = build_model(cfg)
    else:
        model = build_model(cfg, load_from=False)
        load_model_weights(model, resolve_checkpoint(checkpoint, use_ema))
    return model.to(device=device, dtype=dtype).eval().requires_grad_(False)


def build_text_encoder(
    cfg: Mapping, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32, int8: bool = False
) -> TextEncoder:
    """The T5 encoder of ``cfg.text_encoder`` (a local folder) on ``device``; ``int8``: weights stored in 8 bits."""
    section = cfg["text_encoder"]
    te = TextEncoder.from_pretrained(section["path"], max_length=section["max_length"], dtype=dtype, device=device)
    return te.quantize_8bit() if int8 else te


def build_codec(cfg: Mapping, device: str | torch.device = "cpu") -> nn.Module:
    """The image codec of ``cfg.codec`` (pixel codec or a local ``AutoencoderKL``) on ``device``."""
    codec = CODECS.build(dict(cfg["codec"]))
    return codec.to(device) if hasattr(codec, "to") else codec


def load_pipeline(
    cfg: Mapping,
    checkpoint: str | Path | None = None,
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
    use_ema: bool = True,
    model: nn.Module | None = None,
    like: Pipeline | None = None,
    text_encoder_8bit: bool = False,
    lean: bool = False,
) -> Pipeline:
    """A :class:`Pipeline` over the network of :func:`load_model` (or ``model`` as it is, e.g. the trainer's
    validation copy), the config's text encoder and codec, at ``cfg.data.resolution``.

    ``like``: reuse that pipeline's text encoder and codec (two models of one config, e.g. teacher and student).
    ``text_encoder_8bit``: T5 weights in int8 (PixArt-delta's 8 GB inference). ``lean``: T5 waits on the CPU
    between calls and the VAE decodes one image at a time, in tiles above its native size.
    """
    if model is None:
        model = load_model(cfg, checkpoint, device, dtype, use_ema)
    if like is not None:
        return like.with_model(model)
    text_device = "cpu" if lean else device
    text_encoder = build_text_encoder(cfg, text_device, int8=text_encoder_8bit)
    codec = build_codec(cfg, device)
    if lean and hasattr(codec, "set_lean_decode"):
        codec.set_lean_decode(True)
    return Pipeline(model, text_encoder, codec, cfg["data"]["resolution"], offload_text_encoder=lean)
