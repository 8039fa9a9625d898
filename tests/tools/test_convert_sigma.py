"""tools/convert_diffusers.py on PixArt-Sigma, through the command: ``to-diffusers --config`` takes the architecture
from a Σ config (300 tokens, no micro-conditions, pe 0.5) and round-trips losslessly; a KV-compressed checkpoint is
refused with the reason; ``export-pipeline`` writes a ``PixArtSigmaPipeline`` folder on the config's diffusion process
that samples our latents (LCM 4 steps; DPM-Solver++ 20 with CFG) with the null caption of ``tools/make_null_caption.py
--max-length 300``."""

import json
from pathlib import Path

import pytest
import torch
from diffusers import AutoencoderKL, PixArtSigmaPipeline
from mmengine.config import Config
from safetensors.torch import load_file, save_file

from diffusion.build import load_pipeline
from diffusion.data import make_tiny_text_encoder
from diffusion.export import lcm_timesteps
from diffusion.pipeline import SamplerConfig
from diffusion.registry import MODELS
from tests.commands import load_command
from tests.latents import assert_same_latents, diffusers_latents
from tests.model.helpers import KV_CONV, randomize

convert = load_command("tools/convert_diffusers.py").main
make_null_caption = load_command("tools/make_null_caption.py").main

BASES = Path(__file__).resolve().parents[2] / "configs" / "_base_"
SIZE = 16  # pixels = latents: the tiny VAE does not downsample
PROMPTS = ["a red circle", "a small blue square at the top left"]  # lower case: diffusers lower-cases prompts
BETA_END = 0.012  # not PixArt's 0.02: the export must carry the config's diffusion process


@pytest.fixture(scope="module")
def sigma(tmp_path_factory):
    """A tiny Σ config (300 tokens, no micro-conditions, pe 0.5, a tiny VAE and T5, a diffusion section of its own),
    its null caption made by the command, and a random official-format checkpoint."""
    root = tmp_path_factory.mktemp("convert_sigma")
    te_dir = make_tiny_text_encoder(root / "t5", d_model=32, num_layers=1)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        AutoencoderKL(
            block_out_channels=(8,),
            down_block_types=("DownEncoderBlock2D",),
            up_block_types=("UpDecoderBlock2D",),
            norm_num_groups=8,
            latent_channels=4,
            sample_size=32,
        ).save_pretrained(str(root / "vae"))
    null = make_null_caption(["--text-encoder", str(te_dir), "--max-length", "300", "--out", str(root / "null.st")])
    config = root / "sigma.py"
    config.write_text(
        "_base_ = ['{base}/methods/lcm.py']\n"
        "model = dict(type='PixArtMS_tiny', input_size=16, hidden_size=40, num_heads=2, caption_channels=32,\n"
        "             model_max_length=300, pe_interpolation=0.5, micro_condition=False)\n"
        "data = dict(type='FeatureDataset', root='unused', resolution=16, max_length=300)\n"
        "codec = dict(type='AutoencoderKLCodec', path='{vae}')\n"
        "text_encoder = dict(path='{te}', max_length=300, clean_caption=False)\n"
        "weights = dict(null_caption='{null}')\n"
        "diffusion = dict(beta_end={beta_end})\n".format(
            base=BASES,
            vae=root / "vae",
            te=te_dir,
            null=null,
            beta_end=BETA_END,
        )
    )
    cfg = Config.fromfile(str(config))
    model = randomize(MODELS.build(dict(cfg.model)), std=0.05).eval()
    state = dict(model.state_dict(), pos_embed=torch.zeros(1, 64, 40))  # as a released file: pos_embed kept
    torch.save({"state_dict": state}, root / "sigma.pth")
    return dict(root=root, config=config, cfg=cfg, model=model, te=te_dir, null=null)


def test_to_diffusers_takes_the_architecture_from_the_config_and_round_trips(sigma, tmp_path):
    convert(["to-diffusers", str(sigma["root"] / "sigma.pth"), str(tmp_path / "hf"), "--config", str(sigma["config"])])
    config = json.loads((tmp_path / "hf" / "config.json").read_text())
    assert config["use_additional_conditions"] is False and config["interpolation_scale"] == 0.5
    assert config["sample_size"] == SIZE and config["caption_channels"] == 32
    convert(["to-official", str(tmp_path / "hf"), str(tmp_path / "back.safetensors")])
    back, state = load_file(str(tmp_path / "back.safetensors")), sigma["model"].state_dict()
    assert back.keys() == state.keys() and all(torch.equal(back[k], v) for k, v in state.items())
    assert back["y_embedder.y_embedding"].shape == (300, 32)


def test_a_kv_compressed_checkpoint_is_refused_with_the_reason(sigma, tmp_path):
    compressed = MODELS.build(dict(sigma["cfg"].model, kv_compress_config=dict(KV_CONV, kv_compress_layer=[1])))
    save_file(compressed.state_dict(), str(tmp_path / "kv.safetensors"))
    for extra in ([], ["--cfg", "kv_compress_config=" + repr(dict(KV_CONV, kv_compress_layer=[1]))]):
        with pytest.raises(ValueError, match=r"attn\.sr.*no KV-compressed self-attention") as err:
            convert(
                [
                    "to-diffusers",
                    str(tmp_path / "kv.safetensors"),
                    str(tmp_path / "hf"),
                    "--config",
                    str(sigma["config"]),
                    *extra,
                ]
            )
        assert "cannot hold this model" in str(err.value)
    assert not (tmp_path / "hf").exists()


@pytest.mark.parametrize("scheduler", ["lcm", "dpm"])
def test_export_pipeline_samples_our_latents_in_the_sigma_pipeline(sigma, tmp_path, scheduler):
    out = tmp_path / scheduler
    convert(
        [
            "export-pipeline",
            str(sigma["root"] / "sigma.pth"),
            str(out),
            "--config",
            str(sigma["config"]),
            "--scheduler",
            scheduler,
        ]
    )
    assert json.loads((out / "model_index.json").read_text())["_class_name"] == "PixArtSigmaPipeline"  # chosen
    scheduler_config = json.loads((out / "scheduler" / "scheduler_config.json").read_text())
    assert scheduler_config["beta_end"] == pytest.approx(BETA_END)  # the config's process, not PixArt-alpha's
    side = load_file(str(out / "transformer" / "y_embedding.safetensors"))["y_embedding"]
    assert torch.equal(side, load_file(str(sigma["null"]))["y"][0, 0])  # the null caption file's T5("")
    theirs_pipe = PixArtSigmaPipeline.from_pretrained(str(out))
    ours = load_pipeline(sigma["cfg"], sigma["root"] / "sigma.pth")
    assert ours.text_encoder.max_length == 300
    if scheduler == "lcm":
        theirs = diffusers_latents(
            theirs_pipe, SIZE, 3, prompt=PROMPTS, guidance_scale=0.0, timesteps=lcm_timesteps(4)
        )
        expected = ours.sample_latents(PROMPTS, SamplerConfig(name="lcm", steps=4), seed=3)
    else:
        y, mask = ours.encode(PROMPTS)
        null = ours.model.y_embedder.null_caption(len(PROMPTS))[:, 0]  # ours: T5("") under the prompt's mask
        theirs = diffusers_latents(
            theirs_pipe,
            SIZE,
            2,
            prompt_embeds=y[:, 0],
            prompt_attention_mask=mask,
            negative_prompt=None,
            negative_prompt_embeds=null,
            negative_prompt_attention_mask=mask,
            guidance_scale=4.5,
            num_inference_steps=20,
        )
        expected = ours.sample_latents(PROMPTS, SamplerConfig(name="dpm", steps=20, cfg_scale=4.5), seed=2)
    assert_same_latents(theirs, expected, tolerance=1e-5)
