# A tiny multi-scale transformer on 4-channel VAE latents (SD-VAE geometry: in_channels 4), for smoke runs on your
# own images with a local AutoencoderKL (configs/pixart/tiny_own_images.py). Real runs use pixartms_xl2_1024.py.
# input_size is the square latent side at data.resolution (64 px / the tiny VAE's downsample 2 = 32); other buckets
# get their own position embeddings. caption_channels / model_max_length must equal the text encoder's width and
# text_encoder.max_length (64 and 32 for the tiny T5; 4096 and 120 for T5-XXL).
model = dict(
    type="PixArtMS_tiny",
    input_size=32,
    patch_size=2,
    in_channels=4,
    hidden_size=96,
    depth=2,
    num_heads=2,
    caption_channels=64,
    model_max_length=32,
    pe_interpolation=1.0,
    class_dropout_prob=0.1,
)
