# PixArt-XL/2 at 512 px (64x64 latents, 1024 tokens); pe_interpolation 1.0.
model = dict(type="PixArt_XL_2", input_size=64, pe_interpolation=1.0, class_dropout_prob=0.1, grad_checkpointing=True)
