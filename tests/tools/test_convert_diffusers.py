"""tools/convert_diffusers.py: official .pth -> diffusers folder -> official safetensors is lossless; exports that
diffusers could not use are refused before anything is written."""

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from diffusion.data import make_tiny_text_encoder
from diffusion.data.codec import make_tiny_vae
from tests.commands import load_command
from tests.model.helpers import tiny

main = load_command("tools/convert_diffusers.py").main


def test_cli_round_trip(tmp_path):
    model = tiny(True)
    state = model.state_dict()
    torch.save({"state_dict": dict(state, pos_embed=torch.zeros(1, 16, 48))}, tmp_path / "official.pth")
    kwargs = [
        "input_size=8",
        "hidden_size=48",
        "depth=2",
        "num_heads=3",
        "caption_channels=32",
        "model_max_length=16",
        "pe_interpolation=2.0",
    ]
    main(
        ["to-diffusers", str(tmp_path / "official.pth"), str(tmp_path / "hf"), "--model", "PixArtMS", "--cfg", *kwargs]
    )
    assert (tmp_path / "hf" / "y_embedding.safetensors").is_file()
    main(["to-official", str(tmp_path / "hf"), str(tmp_path / "back.safetensors")])
    back = load_file(str(tmp_path / "back.safetensors"))
    assert back.keys() == state.keys()
    assert all(torch.equal(back[k], v) for k, v in state.items())


ROOT = Path(__file__).resolve().parents[2]
LCM_CONFIG = str(ROOT / "configs/lcm/tiny_lcm.py")
LCM_WEIGHTS = str(ROOT / "assets/tiny_lcm/model.safetensors")


def test_export_pipeline_refuses_a_vae_of_other_latent_channels_before_writing(tmp_path):
    vae = make_tiny_vae(tmp_path / "tiny_vae")  # 4 latent channels; the tiny LCM works on 12 (the pixel codec)
    te = make_tiny_text_encoder(tmp_path / "t5", d_model=64, num_layers=1)
    args = ["export-pipeline", LCM_WEIGHTS, str(tmp_path / "out"), "--config", LCM_CONFIG, "--vae", str(vae)]
    with pytest.raises(ValueError, match=r"in_channels 12.*tiny_lcm.*latent_channels 4.*tiny_vae") as err:
        main([*args, "--text-encoder", str(te)])
    assert "model.safetensors" in str(err.value)
    assert not (tmp_path / "out").exists()


def test_export_pipeline_without_vae_names_the_embedded_pixel_codec(tmp_path):
    with pytest.raises(ValueError, match="PixelCodec.*not a diffusers AutoencoderKL.*--vae") as err:
        main(["export-pipeline", LCM_WEIGHTS, str(tmp_path / "out"), "--config", LCM_CONFIG])
    assert "--text-encoder" not in str(err.value)  # text_encoder.path is set in the config
    assert not (tmp_path / "out").exists()


def test_export_lora_of_a_full_student_says_it_has_no_adapters(tmp_path):
    with pytest.raises(ValueError, match="no LoRA adapters") as err:
        main(["export-lora", LCM_WEIGHTS, str(tmp_path / "out"), "--config", LCM_CONFIG])
    assert "tiny_lcm/model.safetensors" in str(err.value)
