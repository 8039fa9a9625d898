"""diffusion/pipeline.py invariants: model-evaluation counts, guidance at w=1, seeding, the 1-step LCM consistency
function, the learned-null CFG combination and the image format."""

import pytest
import torch

from diffusion.data import PixelCodec, TextEncoder, make_tiny_text_encoder
from diffusion.pipeline import Pipeline, SamplerConfig
from diffusion.schedulers import NoiseSchedule, boundary_scalings
from tests.model.helpers import tiny

MAX_LENGTH = 24
PROMPTS = ["a red circle", "a small blue square at the top"]


@pytest.fixture(scope="module")
def pipe(tmp_path_factory):
    """Tiny PixArt on the pixel codec (12 x 8 x 8 latents for 16 px images) with a tiny T5 (32 channels)."""
    te_dir = make_tiny_text_encoder(tmp_path_factory.mktemp("t5") / "t5", d_model=32, num_layers=1)
    model = tiny(False, in_channels=12, input_size=8, pe_interpolation=1.0, model_max_length=MAX_LENGTH)
    return Pipeline(model, TextEncoder.from_pretrained(te_dir, max_length=MAX_LENGTH), PixelCodec(downsample=2), 16)


@pytest.mark.parametrize("sampler, steps, nfe", [("lcm", 4, 4), ("lcm", 1, 1), ("dpm", 5, 10), ("ddim", 3, 6)])
def test_model_evaluations_per_image(pipe, sampler, steps, nfe):
    cfg_scale = None if sampler == "lcm" else 4.5  # an LCM student without a w-embedding takes no cfg_scale
    pipe.sample_latents(PROMPTS, SamplerConfig(name=sampler, steps=steps, cfg_scale=cfg_scale))
    assert pipe.nfe == nfe  # guidance costs two evaluations per step


def test_cfg_scale_one_equals_unguided_conditional(pipe):
    y, mask = pipe.encode(PROMPTS)
    xt = torch.randn(2, 12, 8, 8)
    t = torch.tensor([700, 700])
    info = {"img_hw": torch.full((2, 2), 16.0), "aspect_ratio": torch.ones(2, 1)}
    cond = pipe.denoise_fn(y, mask, info, None)(xt, t)
    batched = pipe.denoise_fn(y, mask, info, 1.0)(xt, t)  # runs [cond ‖ null] and combines with w = 1
    torch.testing.assert_close(batched, cond, rtol=0, atol=1e-5)
    z1 = pipe.sample_latents(PROMPTS, SamplerConfig(name="dpm", steps=4, cfg_scale=1.0), seed=3)
    assert pipe.nfe == 4  # w = 1 skips the null branch altogether
    x_T = torch.randn(2, 12, 8, 8, generator=torch.Generator().manual_seed(3))
    z_given = pipe.sample_latents(PROMPTS, SamplerConfig(name="dpm", steps=4, cfg_scale=1.0), x_T=x_T)
    torch.testing.assert_close(z1, z_given, rtol=0, atol=0)  # the seed draws exactly this x_T


def test_sampler_defaults_fill_what_is_left_out():
    assert (SamplerConfig(name="dpm").steps, SamplerConfig(name="dpm").cfg_scale) == (20, 4.5)
    assert SamplerConfig(name="lcm").steps == 4
    assert SamplerConfig(name="ddim", steps=7, cfg_scale=2.0).steps == 7
    with pytest.raises(ValueError, match="steps >= 1"):
        SamplerConfig(name="lcm", steps=0)


def test_guidance_uses_learned_null_caption_with_prompt_mask(pipe):
    y, mask = pipe.encode(PROMPTS)
    xt, t, w = torch.randn(2, 12, 8, 8), torch.tensor([500, 500]), 4.5
    info = {"img_hw": torch.full((2, 2), 16.0), "aspect_ratio": torch.ones(2, 1)}
    model = pipe.model.eval()
    with torch.no_grad():
        cond = model(xt, t, y, mask)[:, :12]
        uncond = model(xt, t, model.y_embedder.y_embedding[None, None].expand(2, 1, -1, -1), mask)[:, :12]
    guided = pipe.denoise_fn(y, mask, info, w)(xt, t)
    torch.testing.assert_close(guided, uncond + w * (cond - uncond), rtol=0, atol=1e-5)


@pytest.mark.parametrize("sampler", ["lcm", "dpm"])
def test_same_seed_same_images_other_seed_other_images(pipe, sampler):
    a = pipe(PROMPTS, seed=11, name=sampler, steps=3)
    b = pipe(PROMPTS, seed=11, name=sampler, steps=3)
    c = pipe(PROMPTS, seed=12, name=sampler, steps=3)
    assert torch.equal(a, b)
    assert not torch.equal(a, c)


def test_lcm_one_step_is_consistency_function_once(pipe):
    seed = 5
    x_T = torch.randn(2, 12, 8, 8, generator=torch.Generator("cpu").manual_seed(seed))  # the pipeline's own draw
    z = pipe.sample_latents(PROMPTS, SamplerConfig(name="lcm", steps=1), seed=seed)
    y, mask = pipe.encode(PROMPTS)
    t = torch.full((2,), 999)
    with torch.no_grad():
        eps = pipe.model.eval()(x_T, t, y, mask)[:, :12].double()
    a = NoiseSchedule().alphas_cumprod[999]
    x0 = (x_T.double() - (1 - a).sqrt() * eps) / a.sqrt()
    c_skip, c_out = boundary_scalings(999)
    expected = c_skip * x_T.double() + c_out * x0  # f(x_T, T) = c_skip x + c_out x0(x, T)
    scale = expected.abs().max().item()
    torch.testing.assert_close(z.double(), expected, rtol=0, atol=1e-6 * scale)


def test_images_are_uint8_nchw(pipe):
    images = pipe(PROMPTS, seed=0, name="lcm", steps=2)
    assert images.dtype == torch.uint8 and images.shape == (2, 3, 16, 16)
    wide = pipe(PROMPTS[:1], seed=0, name="lcm", steps=1, height=16, width=24)
    assert wide.shape == (1, 3, 16, 24)
    latents = pipe.sample_latents(PROMPTS, SamplerConfig(name="lcm", steps=2), seed=0)
    expected = ((pipe.codec.decode(latents).clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    assert torch.equal(pipe.decode(latents), expected)


def test_w_embedding_student_gets_cfg_scale_minus_one(pipe):
    """diffusers' convention: cfg_scale 5.5 embeds w = 4.5, i.e. samples like the student with w = 4.5 folded in."""
    from diffusion.model.students import fold_guidance_embedding

    kw = dict(in_channels=12, input_size=8, pe_interpolation=1.0, model_max_length=MAX_LENGTH)
    student = tiny(False, guidance_embedding=True, **kw)
    folded = tiny(False, random=False, **kw)
    folded.load_state_dict(fold_guidance_embedding(student, 4.5))
    w_pipe, plain_pipe = pipe.with_model(student), pipe.with_model(folded)
    z = w_pipe.sample_latents(PROMPTS, SamplerConfig(name="lcm", steps=2, cfg_scale=5.5), seed=1)
    folded_z = plain_pipe.sample_latents(PROMPTS, SamplerConfig(name="lcm", steps=2), seed=1)
    torch.testing.assert_close(z, folded_z, rtol=1e-4, atol=1e-3)  # fp32 reassociation of the folded bias
    assert w_pipe.nfe == 2  # the embedded guidance costs no CFG batch
    other = w_pipe.sample_latents(PROMPTS, SamplerConfig(name="lcm", steps=2, cfg_scale=3.0), seed=1)
    assert (other - z).abs().max() > 1e-1
    with pytest.raises(ValueError, match="embeds its guidance"):
        w_pipe.sample_latents(PROMPTS, SamplerConfig(name="lcm", steps=2), seed=1)
    with pytest.raises(ValueError, match="no w-embedding"):
        plain_pipe.sample_latents(PROMPTS, SamplerConfig(name="lcm", steps=2, cfg_scale=5.5), seed=1)
