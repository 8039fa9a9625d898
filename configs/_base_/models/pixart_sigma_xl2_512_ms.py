# Multi-scale PixArt-Sigma-XL/2 at 512 px (PixArt-Sigma-XL-2-512-MS.pth): 64x64 latents (1024 tokens),
# pe_interpolation 1.0, 300-token captions, no micro-conditions (PixArtSigmaMS_XL_2 sets micro_condition=False).
model = dict(
    type="PixArtSigmaMS_XL_2", input_size=64, pe_interpolation=1.0, class_dropout_prob=0.1, grad_checkpointing=True
)
