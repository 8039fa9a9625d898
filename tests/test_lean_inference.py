"""Lean inference (PixArt-delta §4, 8 GB at 1024²): int8 T5 weights, T5 offloaded between calls, VAE decode in
slices/tiles, and captions computed once and passed to ``sample_latents``."""

import pytest
import torch
from diffusers import AutoencoderKL

from diffusion.data import AutoencoderKLCodec, PixelCodec, TextEncoder, make_tiny_text_encoder
from diffusion.pipeline import Pipeline, SamplerConfig
from tests.model.helpers import tiny

MAX_LENGTH = 24
PROMPTS = ["a red circle", "a small blue square at the top"]


@pytest.fixture(scope="module")
def te_dir(tmp_path_factory):
    return make_tiny_text_encoder(tmp_path_factory.mktemp("t5") / "t5", d_model=64, num_layers=1, d_ff=128)


def test_int8_text_encoder_stores_int8_and_encodes_close(te_dir):
    pytest.importorskip("torchao", reason="torchao is the int8 backend (requirements.txt)")
    full = TextEncoder.from_pretrained(te_dir, max_length=MAX_LENGTH)
    y_ref, mask_ref = full.encode(PROMPTS)
    int8 = TextEncoder.from_pretrained(te_dir, max_length=MAX_LENGTH).quantize_8bit()
    weight = int8.model.encoder.block[0].layer[1].DenseReluDense.wi_0.weight
    assert "int8" in str(getattr(weight, "qdata", weight).dtype)  # the stored weight really is 8-bit
    y, mask = int8.encode(PROMPTS)
    assert torch.equal(mask, mask_ref)
    valid = mask_ref[:, None, :, None].bool()
    err = ((y - y_ref).abs() * valid).max() / y_ref.abs().max()
    assert 0 < err < 0.05  # weight rounding changes the features a little, not wholesale


def test_offloaded_text_encoder_and_precomputed_caption_give_the_same_latents(te_dir):
    model = tiny(
        False, in_channels=12, input_size=8, pe_interpolation=1.0, model_max_length=MAX_LENGTH, caption_channels=64
    )
    te = TextEncoder.from_pretrained(te_dir, max_length=MAX_LENGTH)
    pipe = Pipeline(model, te, PixelCodec(downsample=2), 16)
    lean = Pipeline(model, te, PixelCodec(downsample=2), 16, offload_text_encoder=True)
    sampler = SamplerConfig(name="dpm", steps=3, cfg_scale=4.5)
    ref = pipe.sample_latents(PROMPTS, sampler, seed=1)
    torch.testing.assert_close(lean.sample_latents(PROMPTS, sampler, seed=1), ref, rtol=0, atol=0)
    assert te.device.type == "cpu"
    caption = pipe.encode(PROMPTS)
    torch.testing.assert_close(pipe.sample_latents(PROMPTS, sampler, seed=1, caption=caption), ref, rtol=0, atol=0)
    assert lean.with_model(model).offload_text_encoder


def test_lean_vae_decode_is_per_image_and_tiled():
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        vae = AutoencoderKL(
            block_out_channels=(8, 8),
            down_block_types=("DownEncoderBlock2D",) * 2,
            up_block_types=("UpDecoderBlock2D",) * 2,
            norm_num_groups=8,
            latent_channels=4,
            sample_size=32,  # tiles of 16 latents: a 40-latent image is decoded in overlapping tiles
        )
    codec = AutoencoderKLCodec(vae)
    z = torch.randn(3, 4, 40, 40, generator=torch.Generator().manual_seed(0))
    plain = codec.decode(z)
    vae.enable_slicing()  # one image at a time: the same numbers
    torch.testing.assert_close(codec.decode(z), plain, rtol=1e-5, atol=1e-5)
    codec.set_lean_decode(True)
    lean = codec.decode(z)
    assert lean.shape == plain.shape == (3, 3, 80, 80)
    with torch.no_grad():  # tiles, blended (GroupNorm sees one tile: not the plain decode's numbers)
        tiled = torch.cat([vae.tiled_decode(z[i : i + 1]).sample for i in range(3)]).clamp(-1, 1)
    torch.testing.assert_close(lean, tiled, rtol=1e-5, atol=1e-5)
    codec.set_lean_decode(False)
    torch.testing.assert_close(codec.decode(z), plain, rtol=0, atol=0)
