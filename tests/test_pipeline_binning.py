"""Resolution binning, one implementation for PixArt-alpha and Sigma (diffusion/data/buckets.py, Pipeline(binning=)):
the tables are diffusers' (33 buckets at 256 / 512 / 1024, the 40 of ASPECT_RATIO_2048 at 2048), a request goes to
the bucket ``classify_height_width_bin`` picks, the crop back is ``resize_and_crop_tensor``'s, and a tiny Σ exported to
``PixArtSigmaPipeline`` gives our images with binning on at a size that is not a bucket."""

import pytest
import torch
from diffusers import AutoencoderKL, PixArtSigmaPipeline
from diffusers.image_processor import PixArtImageProcessor
from diffusers.pipelines.pixart_alpha.pipeline_pixart_alpha import (
    ASPECT_RATIO_256_BIN,
    ASPECT_RATIO_512_BIN,
    ASPECT_RATIO_1024_BIN,
)
from diffusers.pipelines.pixart_alpha.pipeline_pixart_sigma import ASPECT_RATIO_2048_BIN

from diffusion.data import AutoencoderKLCodec, TextEncoder, make_tiny_text_encoder
from diffusion.data.buckets import (
    ASPECT_RATIO_1024,
    ASPECT_RATIO_2048,
    binning_table,
    closest_bucket,
    resize_and_crop,
)
from diffusion.export import export_pipeline, lcm_timesteps
from diffusion.pipeline import Pipeline
from tests.model.helpers import tiny_sigma

DIFFUSERS_BINS = {
    256: ASPECT_RATIO_256_BIN,
    512: ASPECT_RATIO_512_BIN,
    1024: ASPECT_RATIO_1024_BIN,
    2048: ASPECT_RATIO_2048_BIN,
}
REQUESTS = [(1024, 1024), (1000, 700), (700, 1000), (1080, 1920), (300, 2000), (2000, 300), (333, 333), (2048, 1536)]


def test_the_official_2048_table_has_40_buckets_twice_the_1024_ones():
    assert len(ASPECT_RATIO_2048) == 40 and list(ASPECT_RATIO_2048) == list(ASPECT_RATIO_1024)
    assert all(ASPECT_RATIO_2048[k] == (2 * h, 2 * w) for k, (h, w) in ASPECT_RATIO_1024.items())
    assert ASPECT_RATIO_2048["0.5"] == (1408, 2816) and ASPECT_RATIO_2048["4.0"] == (4096, 1024)


@pytest.mark.parametrize("resolution", sorted(DIFFUSERS_BINS))
def test_binning_tables_are_diffusers(resolution):
    theirs = {k: (int(h), int(w)) for k, (h, w) in DIFFUSERS_BINS[resolution].items()}
    ours = binning_table(resolution, multiple=16)  # SD / SDXL VAE (8) x patch 2: every bucket stays
    assert list(ours.items()) == list(theirs.items())
    assert len(ours) == (40 if resolution == 2048 else 33)
    for height, width in REQUESTS:
        scaled = (height * resolution // 1024, width * resolution // 1024)
        expected = PixArtImageProcessor.classify_height_width_bin(*scaled, ratios=DIFFUSERS_BINS[resolution])
        assert closest_bucket(*scaled, ours)[1] == expected, (resolution, scaled)


def test_binning_keeps_only_buckets_the_model_tiles():
    table = binning_table(32, multiple=4)  # the embedded default: pixel codec 2 x patch 2
    assert table and all(h % 4 == 0 and w % 4 == 0 for h, w in table.values())
    with pytest.raises(ValueError, match="divisible by 1000"):
        binning_table(256, multiple=1000)


@pytest.mark.parametrize(
    "src, dst", [((64, 96), (50, 100)), ((96, 64), (70, 40)), ((40, 40), (40, 40)), ((26, 38), (25, 37))]
)
def test_resize_and_crop_is_diffusers(src, dst):
    images = torch.randn(2, 3, *src, generator=torch.Generator().manual_seed(0))
    expected = PixArtImageProcessor.resize_and_crop_tensor(images.clone(), dst[1], dst[0])
    got = resize_and_crop(images, *dst)
    assert got.shape == (2, 3, *dst)
    torch.testing.assert_close(got, expected, rtol=0, atol=0)


MAX_LENGTH = 30
PROMPTS = ["a red circle", "a small blue square at the top left"]


@pytest.fixture(scope="module")
def sigma_256(tmp_path_factory):
    """A tiny Σ with sample_size 32 and a tiny 8x-downsampling VAE: a 256 px model, binned like the real 256 one."""
    root = tmp_path_factory.mktemp("binning")
    te_dir = make_tiny_text_encoder(root / "t5", d_model=32, num_layers=1)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        vae = AutoencoderKL(
            block_out_channels=(8, 8, 8, 8),
            down_block_types=("DownEncoderBlock2D",) * 4,
            up_block_types=("UpDecoderBlock2D",) * 4,
            norm_num_groups=8,
            latent_channels=4,
            sample_size=256,
        )
        with torch.no_grad():  # decoded values inside (-1, 1): our codec clamps before the crop, diffusers after
            vae.decoder.conv_out.weight.mul_(0.05)
            vae.decoder.conv_out.bias.zero_()
    vae.save_pretrained(str(root / "vae"))
    model = tiny_sigma(std=0.05, input_size=32, depth=2, model_max_length=MAX_LENGTH)
    ours = Pipeline(
        model, TextEncoder.from_pretrained(te_dir, max_length=MAX_LENGTH), AutoencoderKLCodec(root / "vae"), 256
    )
    out = export_pipeline(model, root / "export", te_dir, root / "vae", "lcm", pipeline="PixArtSigmaPipeline")
    return ours, PixArtSigmaPipeline.from_pretrained(str(out))


@pytest.mark.parametrize("height, width", [(200, 300), (256, 256)])
def test_binned_sampling_gives_the_sigma_pipelines_images(sigma_256, height, width):
    ours, theirs = sigma_256
    assert ours.binned_size(height, width) == (
        PixArtImageProcessor.classify_height_width_bin(height, width, ASPECT_RATIO_256_BIN)
    )
    images = ours(PROMPTS, seed=3, binning=True, height=height, width=width, name="lcm", steps=2)
    assert images.shape == (2, 3, height, width)
    assert 0 < images.min() and images.max() < 255 and images.float().std() > 2  # an image, nothing saturated
    expected = theirs(
        PROMPTS,
        height=height,
        width=width,
        use_resolution_binning=True,
        clean_caption=False,
        max_sequence_length=MAX_LENGTH,
        guidance_scale=0.0,
        timesteps=lcm_timesteps(2),
        output_type="pt",
        generator=torch.Generator("cpu").manual_seed(3),
    ).images
    assert expected.shape == images.shape
    # ours quantises [-1, 1] to 0..255 by rounding, diffusers returns [0, 1] floats: one level apart at most
    assert ((expected * 255).round() - images.float()).abs().max() <= 1
