# Real scale, single resolution 512 (PixArt-δ ControlNet 512 recipe; PixArt-α 512 model): T5-XXL 120 tokens,
# SD VAE (sd-vae-ft-ema). Features made by tools/extract_features.py --resolution 512 --codec vae.
data = dict(
    type="FeatureDataset",
    root="data/InternData",
    resolution=512,
    max_length=120,
    json="data_info.json",
    load_control=False,
)
codec = dict(type="AutoencoderKLCodec", path="output/pretrained_models/sd-vae-ft-ema", scale_factor=0.18215)
text_encoder = dict(path="output/pretrained_models/t5_ckpts/t5-v1_1-xxl", max_length=120)
