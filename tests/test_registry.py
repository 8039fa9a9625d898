"""diffusion/registry.py: a misspelt constructor key in any registry-built section is a KeyError naming the config
section, the key and the known keys (not a raw TypeError from deep inside the constructor)."""

import pytest
from torch import nn

from diffusion.registry import DATA_SAMPLERS, METHODS, MODELS


@pytest.mark.parametrize(
    ("registry", "cfg", "section", "known"),
    [
        (MODELS, dict(type="PixArt_tiny", hiden_size=48), "model", "hidden_size"),  # a factory over PixArt(**kwargs)
        (MODELS, dict(type="PixArtMS", hiden_size=48), "model", "caption_channels"),  # PixArtMS(*args, **kwargs)
        (METHODS, dict(type="DiffusionLoss", model=nn.Linear(1, 1), pred_sigm=True), "method", "pred_sigma"),
        (
            DATA_SAMPLERS,
            dict(type="AspectRatioBatchSampler", dataset_ratios=[1.0], batch_size=1, sed=0),
            "data_sampler",
            "seed",
        ),
    ],
)
def test_unknown_key_is_named_with_its_section(registry, cfg, section, known):
    bad = next(k for k in cfg if k not in ("type", "model", "dataset_ratios", "batch_size"))
    with pytest.raises(KeyError, match=f"unknown key.*'{bad}'.*'{section}'.*{known}"):
        registry.build(cfg)


def test_missing_required_key_is_named():
    with pytest.raises(KeyError, match="missing.*'batch_size'.*'data_sampler'"):
        DATA_SAMPLERS.build(dict(type="AspectRatioBatchSampler", dataset_ratios=[1.0]))


def test_valid_keys_still_build():
    model = MODELS.build(dict(type="PixArt_tiny", input_size=8, hidden_size=48, depth=1, num_heads=3))
    assert model.blocks[0].attn.qkv.in_features == 48
