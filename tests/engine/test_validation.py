"""The trainer's memory-light validation (diffusion/engine/validation.py): prompts encoded once equal the text
encoder's features, the EMA weights are swapped in and put back, and the trainer's pipeline over them samples the
same images as ``diffusion.build.load_pipeline`` with a resident T5."""

from types import SimpleNamespace

import pytest
import torch

from diffusion.build import load_pipeline
from diffusion.data import make_tiny_text_encoder
from diffusion.engine import EMA
from diffusion.engine.validation import EncodedPrompts, Validator, swapped_in
from tests.model.helpers import randomize, tiny

PROMPTS = ["a red circle", "a small blue square at the top", "a green cross"]


@pytest.fixture(scope="module")
def cfg(tmp_path_factory):
    te_dir = make_tiny_text_encoder(tmp_path_factory.mktemp("t5") / "t5", d_model=32, num_layers=1)
    return dict(
        text_encoder=dict(path=str(te_dir), max_length=16),
        codec=dict(type="PixelCodec", downsample=2, scale_factor=1.0),
        data=dict(resolution=16),
    )


def test_encoded_prompts_equal_the_text_encoder(cfg):
    encoded = EncodedPrompts.from_config(cfg, PROMPTS, torch.device("cpu"))
    reference = load_pipeline(cfg, model=tiny(False)).text_encoder
    y, mask = encoded.encode([PROMPTS[2], PROMPTS[0]])
    y_ref, mask_ref = reference.encode([PROMPTS[2], PROMPTS[0]])
    assert torch.equal(mask, mask_ref)
    keep = mask.bool()  # padding features depend on the batch's longest prompt; they are masked out of attention
    torch.testing.assert_close(y[:, 0][keep], y_ref[:, 0][keep], rtol=0, atol=1e-6)
    with pytest.raises(KeyError, match="not encoded"):
        encoded.encode(["another prompt"])


def test_ema_is_swapped_in_and_put_back():
    model = tiny(False)
    ema = EMA(model, 0.5)
    randomize(model, seed=9)  # the trained weights move away from the shadow
    trained = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(RuntimeError, match="boom"), swapped_in(model, ema.shadow):
        for name, value in model.state_dict().items():
            if name in ema.shadow:
                assert torch.equal(value, ema.shadow[name]), name
        raise RuntimeError("boom")
    for name, value in model.state_dict().items():
        assert torch.equal(value, trained[name]), name


def test_trainer_pipeline_samples_like_load_pipeline(cfg):
    model = tiny(False, in_channels=12, input_size=8, pe_interpolation=1.0, model_max_length=16)
    fake_validator = SimpleNamespace(cfg=cfg, val_cfg=dict(prompts=PROMPTS), device=torch.device("cpu"))
    pipe = Validator.build_pipeline(fake_validator, model)
    assert isinstance(pipe.text_encoder, EncodedPrompts)  # no T5 kept
    for sampler in (dict(name="lcm", steps=2), dict(name="dpm", steps=3, cfg_scale=3.0)):
        want = load_pipeline(cfg, model=model)(PROMPTS, seed=4, **sampler)
        assert torch.equal(pipe(PROMPTS, seed=4, **sampler), want)
