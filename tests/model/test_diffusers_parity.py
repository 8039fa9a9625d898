"""Our PixArt / PixArtMS against diffusers' PixArtTransformer2DModel with the same (converted) weights."""

import pytest
import torch
from diffusers import PixArtTransformer2DModel

from diffusion.model.diffusers_format import diffusers_forward, load_diffusers, save_diffusers
from tests.model.helpers import inputs, tiny


@pytest.mark.parametrize("ms", [False, True], ids=["PixArt", "PixArtMS"])
@pytest.mark.parametrize("pe_interpolation", [1.0, 2.0])
def test_outputs_match_diffusers(tmp_path, ms, pe_interpolation):
    model = tiny(ms, pe_interpolation=pe_interpolation)
    save_diffusers(model, tmp_path)
    ref = PixArtTransformer2DModel.from_pretrained(tmp_path).eval()
    assert ref.config.use_additional_conditions is ms
    x, t, y, mask, info = inputs(hw=(8, 12))  # 4x6 grid, base grid 4x4: non-square and not the base size
    with torch.no_grad():
        ours = model(x, t, y, mask, info)
    with torch.no_grad():
        theirs = diffusers_forward(ref, x, t, y, mask, info)
    assert ours.shape == theirs.shape == (3, 8, 8, 12)
    assert ours.abs().max() > 0.1  # non-trivial output
    assert (ours - theirs).abs().max() <= 1e-4


def test_micro_conditions_matter_per_sample():
    model = tiny(True)
    x, t, y, mask, info = inputs(batch=2)
    x, t, y, mask = x[:1].repeat(2, 1, 1, 1), t[:1].repeat(2), y[:1].repeat(2, 1, 1, 1), mask[:1].repeat(2, 1)
    with torch.no_grad():
        out = model(x, t, y, mask, info)
    assert (out[0] - out[1]).abs().max() > 1e-3


def test_round_trip_is_exact(tmp_path):
    model = tiny(True)
    save_diffusers(model, tmp_path)
    _, state = load_diffusers(tmp_path)
    original = model.state_dict()
    assert state.keys() == original.keys()
    for key, value in original.items():
        assert torch.equal(state[key], value), key
