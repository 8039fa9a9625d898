"""tools/convert_diffusers.py: official .pth -> diffusers folder -> official safetensors is lossless."""

import torch
from safetensors.torch import load_file

from tests.model.helpers import tiny
from tools.convert_diffusers import main


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
