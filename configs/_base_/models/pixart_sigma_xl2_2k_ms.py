# Multi-scale PixArt-Sigma-XL/2 at 2K (PixArt-Sigma-XL-2-2K-MS.pth): 256x256 latents (16384 tokens),
# pe_interpolation 4.0, 300-token captions, no micro-conditions. The official 2K config is named "kvcompress" but sets
# kv_compress=False, so its compression dict is unused: no compression here either.
model = dict(
    type="PixArtSigmaMS_XL_2", input_size=256, pe_interpolation=4.0, class_dropout_prob=0.1, grad_checkpointing=True
)
