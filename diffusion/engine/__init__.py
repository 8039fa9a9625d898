"""The training engine: one loop for every method (PixArt-α teacher, PixArt-δ LCM distillation and ControlNet)."""

from diffusion.engine.checkpoint import find_latest
from diffusion.engine.ema import EMA
from diffusion.engine.trainer import Trainer, require_finished

__all__ = ["EMA", "Trainer", "find_latest", "require_finished"]
