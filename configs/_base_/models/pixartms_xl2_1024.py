# Multi-scale PixArt-XL/2 at 1024 px (128x128 latents, 4096 tokens); pe_interpolation 2.0; micro-conditions.
# The architecture of PixArt-XL-2-1024-MS.pth, the teacher and student of PixArt-delta's LCM distillation.
model = dict(
    type="PixArtMS_XL_2", input_size=128, pe_interpolation=2.0, class_dropout_prob=0.1, grad_checkpointing=True
)
