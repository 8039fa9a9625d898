# PixArt-XL/2 at 256 px (32x32 latents, 256 tokens); pe_interpolation 1.0 as the official 256 configs.
model = dict(type="PixArt_XL_2", input_size=32, pe_interpolation=1.0, class_dropout_prob=0.1, grad_checkpointing=False)
