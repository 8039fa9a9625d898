# PixArt-Sigma-XL/2 at 256 px (PixArt-Sigma-XL-2-256x256.pth): fixed-resolution PixArt with 300-token captions, 32x32
# latents of the SDXL VAE (256 tokens), pe_interpolation 0.5 (α's 256 configs: 1.0); gradient checkpointing as every
# official Σ config.
model = dict(
    type="PixArtSigma_XL_2", input_size=32, pe_interpolation=0.5, class_dropout_prob=0.1, grad_checkpointing=True
)
