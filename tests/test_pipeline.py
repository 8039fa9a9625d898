"""diffusion/pipeline.py invariants: model-evaluation counts, guidance at w=1, seeding, the 1-step LCM consistency
function, the learned-null CFG combination and the image format."""

import copy

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


# ---------------------------------------------------------------------------------------------- ControlNet (§4)
def _controlnet(pipe, randomize: bool):
    from diffusion.model.controlnet import PixArtControlNet

    cn = PixArtControlNet(copy.deepcopy(pipe.model), copy_blocks=1)
    if randomize:
        g = torch.Generator().manual_seed(3)
        with torch.no_grad():
            for p in cn.controlnet.parameters():
                p.copy_(torch.randn(p.shape, generator=g) * 0.3)
    return pipe.with_model(cn)


def _control_images(seed: int = 0, batch: int = 2) -> torch.Tensor:
    return torch.randint(0, 256, (batch, 3, 16, 16), generator=torch.Generator().manual_seed(seed), dtype=torch.uint8)


@pytest.mark.parametrize("sampler, steps, nfe", [("dpm", 3, 6), ("ddim", 2, 4), ("lcm", 2, 2)])
def test_fresh_controlnet_samples_exactly_the_base(pipe, sampler, steps, nfe):
    controlled = _controlnet(pipe, randomize=False)
    run = SamplerConfig(name=sampler, steps=steps, cfg_scale=None if sampler == "lcm" else 4.5)
    z_base = pipe.sample_latents(PROMPTS, run, seed=4)
    z = controlled.sample_latents(PROMPTS, run, seed=4, control=_control_images())
    assert controlled.nfe == nfe  # the control adds no model evaluation
    assert torch.equal(z, z_base)  # zero projections: the control is a no-op at initialisation


@pytest.mark.parametrize("sampler", ["dpm", "lcm"])
def test_control_reaches_the_model_under_cfg_and_lcm(pipe, sampler):
    controlled = _controlnet(pipe, randomize=True)
    run = SamplerConfig(name=sampler, steps=2, cfg_scale=None if sampler == "lcm" else 4.5)
    seen = []
    real = controlled.model.forward
    controlled.model.forward = lambda *a, c=None, **k: seen.append(c) or real(*a, c=c, **k)
    images = _control_images()
    z_img = controlled.sample_latents(PROMPTS, run, seed=1, control=images)
    del controlled.model.forward
    codec = controlled.codec
    latent = codec.encode(images.float() / 127.5 - 1)[0] * codec.scale_factor  # posterior mean x scale factor
    guided = sampler == "dpm"
    assert all(c.shape[0] == 2 * len(PROMPTS) if guided else len(PROMPTS) for c in seen)
    expected = torch.cat([latent, latent]) if guided else latent  # CFG: both halves see the same control
    assert all(torch.equal(c, expected) for c in seen)
    # the same control as a ready latent, or as float images in [-1, 1], gives the same sample
    assert torch.equal(controlled.sample_latents(PROMPTS, run, seed=1, control=latent), z_img)
    assert torch.equal(controlled.sample_latents(PROMPTS, run, seed=1, control=images.float() / 127.5 - 1), z_img)
    other = controlled.sample_latents(PROMPTS, run, seed=1, control=_control_images(seed=7))
    assert (other - z_img).abs().max() > 1e-3  # another control, another sample
    # one control image broadcasts over every prompt
    one = controlled.sample_latents(PROMPTS, run, seed=1, control=images[:1])
    assert torch.equal(one, controlled.sample_latents(PROMPTS, run, seed=1, control=images[:1].expand(2, -1, -1, -1)))
    assert controlled(PROMPTS, seed=1, name=sampler, steps=2, control=images).shape == (2, 3, 16, 16)


def test_control_errors_are_clear(pipe):
    with pytest.raises(ValueError, match="needs a ControlNet"):
        pipe.sample_latents(PROMPTS, SamplerConfig(name="lcm", steps=1), control=_control_images())
    controlled = _controlnet(pipe, randomize=False)
    with pytest.raises(ValueError, match="control must be"):
        controlled.sample_latents(PROMPTS, SamplerConfig(name="lcm", steps=1), control=_control_images()[:, :, :8])
    with pytest.raises(ValueError, match=r"\[-1, 1\]"):
        controlled.sample_latents(PROMPTS, SamplerConfig(name="lcm", steps=1), control=_control_images().float())


@pytest.mark.parametrize("side", [17, 18, -4])
def test_sizes_the_model_cannot_tile_are_refused(pipe, side):
    """Height and width must be positive multiples of codec downsample (2) x patch size (2): 17 would be floored to
    16 silently, 18 fails deep in the model."""
    for key in ("height", "width"):
        with pytest.raises(ValueError, match=f"{key} {side} .*positive multiple of 4"):
            pipe(PROMPTS[:1], name="lcm", steps=1, **{key: side})
    assert pipe(PROMPTS[:1], name="lcm", steps=1, height=20, width=12).shape == (1, 3, 20, 12)
