"""Codecs: PixelCodec is an exact space-to-depth; AutoencoderKLCodec matches diffusers' AutoencoderKL."""

import pytest
import torch
from diffusers import AutoencoderKL

from diffusion.data import AutoencoderKLCodec, PixelCodec
from diffusion.registry import CODECS


def test_pixel_codec_round_trip_is_exact():
    codec = CODECS.build(dict(type="PixelCodec", downsample=2))
    assert isinstance(codec, PixelCodec)
    images = torch.randint(0, 256, (2, 3, 32, 32)).float() / 127.5 - 1
    mean, std = codec.encode(images)
    assert mean.shape == (2, 12, 16, 16) == std.shape
    assert codec.latent_channels == 12 and codec.downsample == 2 and codec.scale_factor == 1.0
    assert torch.equal(std, torch.zeros_like(std))
    assert torch.equal(codec.decode(mean), images)
    # channel c*4 + i*2 + j of latent pixel (y, x) is image channel c at (2y+i, 2x+j)
    assert mean[1, 2 * 4 + 1 * 2 + 0, 5, 7] == images[1, 2, 11, 14]


@pytest.fixture(scope="module")
def tiny_vae_dir(tmp_path_factory):
    torch.manual_seed(0)
    vae = AutoencoderKL(
        block_out_channels=(8, 16),
        down_block_types=("DownEncoderBlock2D",) * 2,
        up_block_types=("UpDecoderBlock2D",) * 2,
        latent_channels=4,
        norm_num_groups=4,
        layers_per_block=1,
        sample_size=16,
    )
    path = tmp_path_factory.mktemp("vae") / "vae"
    vae.save_pretrained(path)
    return path


def test_autoencoder_kl_codec_matches_diffusers(tiny_vae_dir):
    codec = CODECS.build(dict(type="AutoencoderKLCodec", path=str(tiny_vae_dir)))
    assert codec.latent_channels == 4 and codec.downsample == 2 and codec.scale_factor == 0.18215
    reference = AutoencoderKL.from_pretrained(tiny_vae_dir).eval()
    images = torch.rand(2, 3, 16, 16) * 2 - 1
    mean, std = codec.encode(images)
    assert mean.shape == std.shape == (2, 4, 8, 8)
    assert (std > 0).all()
    with torch.no_grad():
        posterior = reference.encode(images).latent_dist
        decoded = reference.decode(mean).sample
    torch.testing.assert_close(mean, posterior.mean)
    torch.testing.assert_close(std, posterior.std)
    out = codec.decode(mean)
    assert out.shape == images.shape and out.abs().max() <= 1
    torch.testing.assert_close(out, decoded.clamp(-1, 1))


def test_autoencoder_kl_codec_missing_path(tmp_path):
    with pytest.raises(FileNotFoundError, match="no_vae"):
        AutoencoderKLCodec(tmp_path / "no_vae")
