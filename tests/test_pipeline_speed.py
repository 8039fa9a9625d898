"""Speed switches of the pipeline hold the output: the caption projection and the cross-attention K/V computed once
per prompt batch (``PixArt.encode_caption`` + ``forward(caption=...)``) give the plain path's latents in fp32, at
1, 4 and 20 steps, with and without CFG, for the plain model and both ControlNet wrappers (whose copies have K/V of
their own); regional compilation (``Pipeline(compile=True)``) gives the eager latents; CUDA graphs refuse a CPU
model."""

import copy

import pytest
import torch

from diffusion.data import PixelCodec, TextEncoder, make_tiny_text_encoder
from diffusion.model.compile import cpp_compiler_missing
from diffusion.model.controlnet import ControlCaption, PixArtControlNet, PixArtControlNetUNet
from diffusion.pipeline import Pipeline, SamplerConfig
from tests.model.helpers import inputs, tiny
from tests.model.test_controlnet import _randomize_projections

MAX_LENGTH = 24
PROMPTS = ["a red circle", "a small blue square at the top"]  # different lengths: a real mask


@pytest.fixture(scope="module")
def pipe(tmp_path_factory):
    te_dir = make_tiny_text_encoder(tmp_path_factory.mktemp("t5") / "t5", d_model=32, num_layers=1)
    model = tiny(True, in_channels=12, input_size=8, pe_interpolation=1.0, model_max_length=MAX_LENGTH)
    return Pipeline(model, TextEncoder.from_pretrained(te_dir, max_length=MAX_LENGTH), PixelCodec(downsample=2), 16)


def test_forward_with_encoded_caption_equals_plain_forward():
    model = tiny(True).eval()
    x, t = torch.randn(2, 4, 8, 8), torch.tensor([10, 900])
    y, mask = torch.randn(2, 1, 16, 32), torch.zeros(2, 16, dtype=torch.long)
    mask[0, :5], mask[1, :11] = 1, 1
    info = {"img_hw": torch.tensor([[64.0, 64.0], [32.0, 64.0]]), "aspect_ratio": torch.tensor([[1.0], [0.5]])}
    with torch.no_grad():
        plain = model(x, t, y, mask, info)
        cached = model(x, t, None, None, info, caption=model.encode_caption(y, mask))
    torch.testing.assert_close(cached, plain, rtol=1e-6, atol=1e-6)
    with pytest.raises(ValueError, match="caption batch"):
        model(x[:1], t[:1], None, None, info, caption=model.encode_caption(y, mask))


@pytest.mark.parametrize(
    "sampler, steps, cfg",
    [("lcm", 1, None), ("lcm", 4, None), ("dpm", 4, 1.0), ("dpm", 20, 4.5), ("ddim", 1, 4.5), ("ddim", 4, 4.5)],
)
def test_reused_caption_gives_the_plain_latents(pipe, sampler, steps, cfg):
    config = SamplerConfig(name=sampler, steps=steps, cfg_scale=cfg)
    pipe.reuse_caption = False
    plain = pipe.sample_latents(PROMPTS, config, seed=2)
    pipe.reuse_caption = True
    cached = pipe.sample_latents(PROMPTS, config, seed=2)
    torch.testing.assert_close(cached, plain, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("cls, n", [(PixArtControlNet, 3), (PixArtControlNetUNet, 2)])
def test_controlnet_forward_with_encoded_caption_equals_plain_forward(cls, n):
    cn = _randomize_projections(cls(tiny(True, depth=4), copy_blocks=n).eval())
    x, t, y, mask, info = inputs()
    c = torch.randn_like(x)
    with torch.no_grad():
        caption = cn.encode_caption(y, mask)
        assert isinstance(caption, ControlCaption) and len(caption.kv) == 4 and len(caption.copy_kv) == n
        for ctl in (c, None):
            plain = cn(x, t, y, mask, info, c=ctl)
            torch.testing.assert_close(cn(x, t, None, None, info, c=ctl, caption=caption), plain, rtol=1e-6, atol=1e-6)
    with pytest.raises(ValueError, match="caption batch"):
        cn(x[:1], t[:1], None, None, info, caption=caption)


@pytest.mark.parametrize("cls", [PixArtControlNet, PixArtControlNetUNet])
@pytest.mark.parametrize("sampler, steps, cfg", [("lcm", 4, None), ("dpm", 4, 4.5)])
def test_controlnet_pipeline_reuses_the_caption_with_the_same_latents(pipe, cls, sampler, steps, cfg):
    cn = _randomize_projections(cls(pipe.model, copy_blocks=1).eval())
    controlled = pipe.with_model(cn)
    control = torch.randn(1, pipe.model.in_channels, 8, 8)  # a ready control latent
    config = SamplerConfig(name=sampler, steps=steps, cfg_scale=cfg)
    controlled.reuse_caption = False
    plain = controlled.sample_latents(PROMPTS, config, seed=3, control=control)
    controlled.reuse_caption = True
    cached = controlled.sample_latents(PROMPTS, config, seed=3, control=control)
    torch.testing.assert_close(cached, plain, rtol=1e-5, atol=1e-5)
    no_control = controlled.sample_latents(PROMPTS, config, seed=3)
    assert (cached - no_control).abs().max() > 1e-3  # the control reaches the latents on the cached path


def test_pipeline_compile_switches(pipe):
    with pytest.raises(RuntimeError, match="CUDA"):
        pipe.with_model(pipe.model, cuda_graphs=True)  # the model is on the CPU
    with pytest.raises(ValueError, match="not both"):
        Pipeline(pipe.model, pipe.text_encoder, pipe.codec, 16, compile=True, cuda_graphs=True)


@pytest.mark.skipif(cpp_compiler_missing() is not None, reason="no C++ compiler for inductor")
@pytest.mark.slow  # inductor builds C++ kernels for one block: ~20-60 s on two shared cores
@pytest.mark.parametrize("sampler, steps, cfg", [("lcm", 4, None), ("dpm", 3, 4.5)])
def test_compiled_pipeline_gives_the_eager_latents(pipe, sampler, steps, cfg):
    compiled = pipe.with_model(copy.deepcopy(pipe.model), compile=True)
    config = SamplerConfig(name=sampler, steps=steps, cfg_scale=cfg)
    eager = pipe.sample_latents(PROMPTS, config, seed=5)
    z = compiled.sample_latents(PROMPTS, config, seed=5)
    torch.testing.assert_close(z, eager, rtol=1e-3, atol=1e-3)  # CFG 4.5 amplifies reordered fp32 sums; bf16 is 1e-2


@pytest.mark.parametrize("controlnet", [None, PixArtControlNet, PixArtControlNetUNet])
def test_a_sharded_model_samples_like_the_unsharded_one(pipe, tmp_path, controlnet):
    """The trainer's validation grids under FSDP2: the caption reuse must not reach into sharded parameters outside a
    forward (their projections are DTensors there); the latents equal those of the same network unsharded."""
    import torch.distributed as torch_dist
    from torch.distributed.device_mesh import init_device_mesh

    from diffusion.engine import parallel

    model = copy.deepcopy(pipe.model)
    if controlnet:
        model = _randomize_projections(controlnet(model, copy_blocks=1).eval())
    control = {"control": torch.rand(len(PROMPTS), 3, 16, 16)} if controlnet else {}
    config = SamplerConfig(name="dpm", steps=3, cfg_scale=4.5)
    plain = pipe.with_model(copy.deepcopy(model)).sample_latents(PROMPTS, config, seed=1, **control)
    torch_dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    try:
        parallel._shard(model, init_device_mesh("cpu", (1,)))
        assert parallel.is_sharded(model)
        sharded = pipe.with_model(model).sample_latents(PROMPTS, config, seed=1, **control)
    finally:
        torch_dist.destroy_process_group()
    torch.testing.assert_close(sharded, plain, rtol=1e-5, atol=1e-5)
