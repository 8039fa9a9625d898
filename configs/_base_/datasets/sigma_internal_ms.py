# PixArt-Sigma data, multi-scale (InternalDataMSSigma): one aspect-ratio bucket per batch; 1024 px here, leaves set
# data.resolution and data_sampler.table (ASPECT_RATIO_512 / _1024 / _2048, 40 buckets each). Everything else (T5-XXL
# at 300 tokens without caption cleaning, the SDXL VAE, the 300-token null caption, how to make the features) is the
# single-resolution base's; extract_features.py takes --multi-scale in addition.
_base_ = ["./sigma_internal.py"]
data = dict(resolution=1024, multi_scale=True)
data_sampler = dict(type="AspectRatioBatchSampler", table="ASPECT_RATIO_1024", drop_last=True, shuffle=True)
