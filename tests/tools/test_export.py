"""diffusion/export.py and `convert_diffusers.py export-pipeline`: the exported folder loads offline in diffusers'
PixArtAlphaPipeline and samples the same latents as our Pipeline (LCM 1/2/4 steps, and the DPM teacher)."""

import json

import pytest
import torch
from diffusers import AutoencoderKL, PixArtAlphaPipeline
from safetensors.torch import save_file

from diffusion.data import AutoencoderKLCodec, TextEncoder, make_tiny_text_encoder
from diffusion.export import export_pipeline, lcm_timesteps
from diffusion.model.io import load_state
from diffusion.pipeline import Pipeline, SamplerConfig
from tests.commands import load_command
from tests.latents import assert_same_latents, diffusers_latents
from tests.model.helpers import tiny

convert_main = load_command("tools/convert_diffusers.py").main

MAX_LENGTH = 40
SIZE = 16  # pixels = latent size: the tiny VAE does not downsample
PROMPTS = ["a red circle", "a small blue square at the top left"]  # lower case: diffusers lower-cases prompts
MODEL_KW = dict(input_size=SIZE, pe_interpolation=1.0, model_max_length=MAX_LENGTH)


@pytest.fixture(scope="module")
def parts(tmp_path_factory):
    """A tiny non-MS PixArt (sample_size 16), a tiny T5 and a tiny random AutoencoderKL saved locally."""
    root = tmp_path_factory.mktemp("export")
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
    model = tiny(False, **MODEL_KW)
    text_encoder = TextEncoder.from_pretrained(te_dir, max_length=MAX_LENGTH)
    ours = Pipeline(model, text_encoder, AutoencoderKLCodec(root / "vae"), SIZE)
    lcm_dir = export_pipeline(model, root / "lcm", te_dir, root / "vae")
    return dict(root=root, te_dir=te_dir, model=model, ours=ours, lcm_dir=lcm_dir)


def export_latents(pipe, seed: int, output_type: str = "latent", **kwargs) -> torch.Tensor:
    return diffusers_latents(pipe, SIZE, seed, output_type, prompt=PROMPTS, max_sequence_length=MAX_LENGTH, **kwargs)


@pytest.mark.parametrize("steps", [1, 2, 4])
def test_lcm_export_matches_our_pipeline(parts, steps):
    pipe = PixArtAlphaPipeline.from_pretrained(str(parts["lcm_dir"]))
    timesteps = lcm_timesteps(steps, "pixart")  # official PixArt-LCM schedule: passed explicitly to diffusers
    theirs = export_latents(pipe, seed=3, guidance_scale=0.0, timesteps=timesteps)
    ours = parts["ours"].sample_latents(PROMPTS, SamplerConfig(name="lcm", steps=steps), seed=3)
    assert ours.shape == (2, 4, SIZE, SIZE)
    assert parts["ours"].nfe == steps
    assert_same_latents(theirs, ours)


def test_lcm_export_num_inference_steps_uses_diffusers_spacing(parts):
    pipe = PixArtAlphaPipeline.from_pretrained(str(parts["lcm_dir"]))
    theirs = export_latents(pipe, seed=5, guidance_scale=0.0, num_inference_steps=4)
    assert pipe.scheduler.timesteps.tolist() == [999, 759, 499, 259]
    sampler = SamplerConfig(name="lcm", steps=4, lcm_schedule="diffusers")
    assert_same_latents(theirs, parts["ours"].sample_latents(PROMPTS, sampler, seed=5))


def test_lcm_export_decoded_images_match(parts):
    pipe = PixArtAlphaPipeline.from_pretrained(str(parts["lcm_dir"]))
    theirs = export_latents(pipe, seed=1, output_type="pt", guidance_scale=0.0, timesteps=lcm_timesteps(2))
    ours = parts["ours"](PROMPTS, seed=1, name="lcm", steps=2)
    assert ours.dtype == torch.uint8 and ours.shape == theirs.shape == (2, 3, SIZE, SIZE)
    assert (ours.float() / 255 - theirs).abs().max() <= 1 / 255 + 1e-4


def test_teacher_export_with_dpm_matches_unguided_pipeline(parts):
    out = export_pipeline(parts["model"], parts["root"] / "teacher", parts["te_dir"], parts["root"] / "vae", "dpm")
    pipe = PixArtAlphaPipeline.from_pretrained(str(out))
    assert type(pipe.scheduler).__name__ == "DPMSolverMultistepScheduler"
    # guidance 1 = no CFG in both (diffusers' null is T5(""), ours the learned y_embedding: only w=1 is comparable)
    theirs = export_latents(pipe, seed=2, guidance_scale=1.0, num_inference_steps=5)
    ours = parts["ours"].sample_latents(PROMPTS, SamplerConfig(name="dpm", steps=5, cfg_scale=1.0), seed=2)
    assert_same_latents(theirs, ours)


def test_export_layout_and_round_trip(parts):
    out = parts["lcm_dir"]
    index = json.loads((out / "model_index.json").read_text())
    assert index["_class_name"] == "PixArtAlphaPipeline"
    assert index["scheduler"] == ["diffusers", "LCMScheduler"]
    scheduler = json.loads((out / "scheduler" / "scheduler_config.json").read_text())
    assert (scheduler["beta_schedule"], scheduler["beta_start"], scheduler["beta_end"]) == ("linear", 1e-4, 0.02)
    assert (scheduler["timestep_scaling"], scheduler["original_inference_steps"]) == (10.0, 50)
    listed = json.loads((out / "scheduler" / "lcm_timesteps.json").read_text())
    assert listed["timesteps"]["4"] == [999, 759, 519, 279]
    assert (out / "transformer" / "y_embedding.safetensors").is_file()
    assert not any(p.name.startswith("tokenizer") for p in (out / "text_encoder").iterdir())
    state = load_state(out)  # the folder reads back as an official-format checkpoint, null caption included
    expected = parts["model"].state_dict()
    assert state.keys() == expected.keys()
    assert all(torch.equal(state[k], v) for k, v in expected.items())


def test_export_rejects_micro_conditions_diffusers_would_not_feed(parts):
    model = tiny(True, **MODEL_KW)  # PixArtMS at sample_size 16: the pipeline would pass no resolution/aspect ratio
    with pytest.raises(ValueError, match="micro-conditions"):
        export_pipeline(model, parts["root"] / "ms", parts["te_dir"], parts["root"] / "vae")
    with pytest.raises(ValueError, match="scheduler"):
        export_pipeline(parts["model"], parts["root"] / "bad", parts["te_dir"], parts["root"] / "vae", "euler")


def test_cli_export_pipeline(parts, tmp_path):
    root = parts["root"]
    save_file(parts["model"].state_dict(), str(tmp_path / "student.safetensors"))
    model_cfg = dict(type="PixArt_tiny", hidden_size=48, num_heads=3, caption_channels=32, **MODEL_KW)
    (tmp_path / "cfg.py").write_text(
        f"model = {model_cfg!r}\n"
        f"text_encoder = dict(path={str(parts['te_dir'])!r}, max_length={MAX_LENGTH})\n"
        f"codec = dict(type='AutoencoderKLCodec', path={str(root / 'vae')!r}, scale_factor=0.18215)\n"
    )
    convert_main(
        ["export-pipeline", str(tmp_path / "student.safetensors"), str(tmp_path / "out")]
        + ["--config", str(tmp_path / "cfg.py")]
    )  # text encoder and VAE taken from the config
    pipe = PixArtAlphaPipeline.from_pretrained(str(tmp_path / "out"))
    theirs = export_latents(pipe, seed=4, guidance_scale=0.0, timesteps=lcm_timesteps(4))
    assert_same_latents(theirs, parts["ours"].sample_latents(PROMPTS, SamplerConfig(name="lcm", steps=4), seed=4))


def test_cli_export_w_embedding_student_folds_its_guidance(parts, tmp_path):
    """diffusers has no w-embedding: the export at --cfg-scale 5.5 samples like our pipeline with cfg_scale 5.5."""
    root = parts["root"]
    student = tiny(False, guidance_embedding=True, **MODEL_KW)
    save_file(student.state_dict(), str(tmp_path / "student.safetensors"))
    model_cfg = dict(type="PixArt_tiny", hidden_size=48, num_heads=3, caption_channels=32, **MODEL_KW)
    model_cfg["guidance_embedding"] = True
    (tmp_path / "cfg.py").write_text(
        f"model = {model_cfg!r}\n"
        "method = dict(type='LCMDistillation', w=4.5, guidance_embedding=True)\n"
        f"text_encoder = dict(path={str(parts['te_dir'])!r}, max_length={MAX_LENGTH})\n"
        f"codec = dict(type='AutoencoderKLCodec', path={str(root / 'vae')!r}, scale_factor=0.18215)\n"
    )
    convert_main(
        ["export-pipeline", str(tmp_path / "student.safetensors"), str(tmp_path / "out")]
        + ["--config", str(tmp_path / "cfg.py"), "--cfg-scale", "5.5"]
    )
    pipe = PixArtAlphaPipeline.from_pretrained(str(tmp_path / "out"))
    theirs = export_latents(pipe, seed=4, guidance_scale=0.0, timesteps=lcm_timesteps(2))
    ours = (
        parts["ours"]
        .with_model(student)
        .sample_latents(PROMPTS, SamplerConfig(name="lcm", steps=2, cfg_scale=5.5), seed=4)
    )
    assert_same_latents(theirs, ours)
