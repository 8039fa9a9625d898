"""Training objectives (PixArt-delta arXiv 2401.05252): the teacher/ControlNet diffusion loss and LCM distillation."""

from diffusion.methods.base import Method
from diffusion.methods.diffusion_loss import DiffusionLoss
from diffusion.methods.lcm_distillation import LCMDistillation, consistency_fn

__all__ = ["DiffusionLoss", "LCMDistillation", "Method", "consistency_fn"]
