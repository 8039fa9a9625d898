# The embedded default's transformer: 256 wide, 6 blocks, patch 2 on the pixel codec's 12x16x16 latents (64 tokens),
# 64-channel captions from the tiny word-level T5 (13 tokens).
model = dict(
    type="PixArt_tiny",
    input_size=16,
    patch_size=2,
    in_channels=12,
    hidden_size=256,
    depth=6,
    num_heads=4,
    caption_channels=64,
    model_max_length=13,
    pe_interpolation=1.0,
    class_dropout_prob=0.1,
)
