"""diffusion/export.py for PixArt-Sigma: the exported folder loads offline in diffusers' PixArtSigmaPipeline and
samples our latents (LCM 4 steps; DPM-Solver++ 20 steps with CFG, diffusers given our null caption under the
prompt's mask); a KV-compressed / qk-norm model or one with micro-conditions is refused before anything is written."""

import json

import pytest
import torch
from diffusers import AutoencoderKL, PixArtSigmaPipeline

from diffusion.data import AutoencoderKLCodec, TextEncoder, make_tiny_text_encoder
from diffusion.export import default_pipeline, export_pipeline, lcm_timesteps
from diffusion.model import PixArtMS, PixArtSigmaMS_XL_2
from diffusion.pipeline import Pipeline, SamplerConfig
from tests.latents import assert_same_latents, diffusers_latents
from tests.model.helpers import KV_CONV, SIGMA_ARCH, randomize

MAX_LENGTH = 40
SIZE = 16  # pixels = latent size: the tiny VAE does not downsample
PROMPTS = ["a red circle", "a small blue square at the top left"]  # lower case: diffusers lower-cases prompts
MODEL_KW = dict(SIGMA_ARCH, input_size=SIZE, model_max_length=MAX_LENGTH, micro_condition=False)


def _sigma(**kw) -> PixArtMS:
    return randomize(PixArtMS(**{**MODEL_KW, **kw}), std=0.05).eval()


@pytest.fixture(scope="module")
def parts(tmp_path_factory):
    root = tmp_path_factory.mktemp("export_sigma")
    te_dir = make_tiny_text_encoder(root / "t5", d_model=32, num_layers=1)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        vae = AutoencoderKL(
            block_out_channels=(8,),
            down_block_types=("DownEncoderBlock2D",),
            up_block_types=("UpDecoderBlock2D",),
            norm_num_groups=8,
            latent_channels=4,
            sample_size=32,
        )
    vae.save_pretrained(str(root / "vae"))
    model = _sigma()
    text_encoder = TextEncoder.from_pretrained(te_dir, max_length=MAX_LENGTH)
    ours = Pipeline(model, text_encoder, AutoencoderKLCodec(root / "vae"), SIZE)
    return dict(root=root, te_dir=te_dir, model=model, ours=ours)


def test_lcm_export_loads_in_the_sigma_pipeline_and_matches(parts):
    out = export_pipeline(
        parts["model"],
        parts["root"] / "lcm",
        parts["te_dir"],
        parts["root"] / "vae",
        "lcm",
        pipeline="PixArtSigmaPipeline",
    )
    index = json.loads((out / "model_index.json").read_text())
    assert index["_class_name"] == "PixArtSigmaPipeline"
    config = json.loads((out / "transformer" / "config.json").read_text())
    assert config["use_additional_conditions"] is False and config["interpolation_scale"] == 0.5
    pipe = PixArtSigmaPipeline.from_pretrained(str(out))
    theirs = diffusers_latents(
        pipe, SIZE, 3, max_sequence_length=MAX_LENGTH, prompt=PROMPTS, guidance_scale=0.0, timesteps=lcm_timesteps(4)
    )
    ours = parts["ours"].sample_latents(PROMPTS, SamplerConfig(name="lcm", steps=4), seed=3)
    assert ours.shape == (2, 4, SIZE, SIZE)
    assert_same_latents(theirs, ours, tolerance=1e-5)


def test_dpm_export_with_cfg_matches_given_our_null_caption(parts):
    out = export_pipeline(
        parts["model"],
        parts["root"] / "dpm",
        parts["te_dir"],
        parts["root"] / "vae",
        "dpm",
        pipeline="PixArtSigmaPipeline",
    )
    pipe = PixArtSigmaPipeline.from_pretrained(str(out))
    y, mask = parts["ours"].encode(PROMPTS)
    null = parts["model"].y_embedder.null_caption(len(PROMPTS))[:, 0]  # ours: y_embedding under the prompt's mask
    theirs = diffusers_latents(
        pipe,
        SIZE,
        2,
        max_sequence_length=MAX_LENGTH,
        prompt_embeds=y[:, 0],
        prompt_attention_mask=mask,
        negative_prompt=None,
        negative_prompt_embeds=null,
        negative_prompt_attention_mask=mask,
        guidance_scale=4.5,
        num_inference_steps=20,
    )
    ours = parts["ours"].sample_latents(PROMPTS, SamplerConfig(name="dpm", steps=20, cfg_scale=4.5), seed=2)
    assert_same_latents(theirs, ours, tolerance=1e-5)


def test_sigma_is_the_default_pipeline_of_a_300_token_model_without_micro_conditions(parts):
    with torch.device("meta"):
        assert default_pipeline(PixArtSigmaMS_XL_2(input_size=128)) == "PixArtSigmaPipeline"
    assert default_pipeline(parts["model"]) == "PixArtAlphaPipeline"  # 40 tokens: say which one explicitly


@pytest.mark.parametrize(
    "model,error",
    [
        (lambda: _sigma(kv_compress_config=dict(KV_CONV, kv_compress_layer=[1])), "no KV-compressed self-attention"),
        (lambda: _sigma(qk_norm=True), r"LayerNorm\(head_dim\)"),
        (lambda: _sigma(micro_condition=True, hidden_size=48, num_heads=3), "never passes them"),
    ],
    ids=["kv_compress", "qk_norm", "micro_conditions"],
)
def test_unexportable_sigma_models_are_refused_before_writing(parts, model, error):
    out = parts["root"] / "refused"
    with pytest.raises(ValueError, match=error):
        export_pipeline(model(), out, parts["te_dir"], parts["root"] / "vae", pipeline="PixArtSigmaPipeline")
    assert not out.exists()
