# The embedded default: 32x32 coloured shapes (diffusion/data/embedded.py), pixel codec (space-to-depth, 12x16x16
# latents), tiny word-level T5 (64 channels). Created by diffusion.data.ensure_embedded_default.
# max_length 13 = longest caption (12 words) + EOS; tests/data check it against the generator.
data = dict(
    type="FeatureDataset",
    root="output/embedded_data",
    resolution=32,
    max_length=13,
    json="data_info.json",
    load_control=False,
)
codec = dict(type="PixelCodec", downsample=2, scale_factor=1.0)
text_encoder = dict(path="output/tiny_text_encoder", max_length=13)
