# Multi-scale PixArt-Sigma-XL/2 at 1024 px (PixArt-Sigma-XL-2-1024-MS.pth): 128x128 latents (4096 tokens),
# pe_interpolation 2.0, 300-token captions, no micro-conditions. The teacher / student of the Σ LCM and the base of
# the Σ ControlNet; the KV-compressed variant adds model.kv_compress_config.
model = dict(
    type="PixArtSigmaMS_XL_2", input_size=128, pe_interpolation=2.0, class_dropout_prob=0.1, grad_checkpointing=True
)
