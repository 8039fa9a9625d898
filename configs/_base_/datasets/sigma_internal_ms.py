# PixArt-Sigma data, multi-scale (InternalDataMSSigma): one aspect-ratio bucket per batch; 1024 px here, leaves set
# data.resolution and data_sampler.table (ASPECT_RATIO_512 / _1024 / _2048, 40 buckets each). T5-XXL at 300 tokens
# without caption cleaning, the SDXL VAE (scale_factor 0.13025). Features made by
#   tools/extract_features.py --resolution R --multi-scale --codec vae --vae <the codec path below> \
#       --scale-factor 0.13025 --text-encoder <the T5 path below> --max-length 300 --no-clean-caption
# weights.null_caption: T5("") at 300 tokens, the model's y_embedding over every checkpoint's (the official Σ
# loader's rule):
#   python tools/make_null_caption.py --text-encoder <the T5 path below> --max-length 300 --out <the path below>
data = dict(
    type="FeatureDataset",
    root="data/InternData",
    resolution=1024,
    max_length=300,
    json="data_info.json",
    load_control=False,
    multi_scale=True,
)
data_sampler = dict(type="AspectRatioBatchSampler", table="ASPECT_RATIO_1024", drop_last=True, shuffle=True)
codec = dict(
    type="AutoencoderKLCodec",
    path="output/pretrained_models/pixart_sigma_sdxlvae_T5_diffusers/vae",
    scale_factor=0.13025,
)
text_encoder = dict(path="output/pretrained_models/t5_ckpts/t5-v1_1-xxl", max_length=300, clean_caption=False)
weights = dict(null_caption="output/pretrained_models/null_caption_t5_300.safetensors")
