# Real scale, multi-scale 1024 (PixArt-δ LCM recipe: InternalDataMS + ASPECT_RATIO_1024 buckets, facts §3.5, §6):
# T5-XXL 120 tokens, SD VAE. Features made by tools/extract_features.py --resolution 1024 --multi-scale --codec vae.
# The trainer adds batch_size, seed, rank and world_size to data_sampler.
data = dict(
    type="FeatureDataset",
    root="data/InternData",
    resolution=1024,
    max_length=120,
    json="data_info.json",
    load_control=False,
    multi_scale=True,
)
data_sampler = dict(type="AspectRatioBatchSampler", table="ASPECT_RATIO_1024", drop_last=True, shuffle=True)
codec = dict(type="AutoencoderKLCodec", path="output/pretrained_models/sd-vae-ft-ema", scale_factor=0.18215)
text_encoder = dict(path="output/pretrained_models/t5_ckpts/t5-v1_1-xxl", max_length=120)
