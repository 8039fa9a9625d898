# Your own images (docs/data.md, "Train on your own images"): data_info.json by tools/make_data_info.py,
# features by tools/extract_features.py --multi-scale --codec vae. Keys to change for real data:
#   data.root, data.resolution (+ data_sampler.table), data.max_length = text_encoder.max_length (120 for T5-XXL),
#   codec.path (e.g. output/pretrained_models/sd-vae-ft-ema), text_encoder.path (t5-v1_1-xxl).
data = dict(
    type="FeatureDataset",
    root="output/my_images",
    resolution=64,
    max_length=32,
    json="data_info.json",
    load_control=False,
    multi_scale=True,
)
data_sampler = dict(type="AspectRatioBatchSampler", table=64, drop_last=True, shuffle=True)
# scale_factor: the VAE's own config.scaling_factor when left out (0.18215 for sd-vae-ft-ema).
codec = dict(type="AutoencoderKLCodec", path="output/tiny_vae")
text_encoder = dict(path="output/tiny_text_encoder", max_length=32)
