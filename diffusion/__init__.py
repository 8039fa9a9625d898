"""PixArt-delta reproduction: PixArt-alpha transformer, teacher diffusion, LCM distillation, ControlNet-Transformer."""
