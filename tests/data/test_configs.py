"""The dataset base configs load, use only trainer top-level keys, and build what they name."""

from pathlib import Path

import pytest
from mmengine.config import Config

from diffusion.data import EMBEDDED_MAX_LENGTH
from diffusion.registry import CODECS, DATA_SAMPLERS, DATASETS

TRAINER_KEYS = {"data", "data_sampler", "codec", "text_encoder"}

CONFIG_DIR = Path(__file__).resolve().parents[2] / "configs" / "_base_" / "datasets"


@pytest.mark.parametrize("name", ["embedded_32", "internal_512", "internal_1024_ms", "own_images"])
def test_config_keys(name):
    cfg = Config.fromfile(CONFIG_DIR / f"{name}.py")
    assert set(cfg.keys()) <= TRAINER_KEYS and {"data", "codec", "text_encoder"} <= set(cfg.keys())
    assert cfg.data.type == "FeatureDataset" and cfg.data.max_length == cfg.text_encoder.max_length
    assert DATASETS.get(cfg.data.type) is not None and CODECS.get(cfg.codec.type) is not None
    if "data_sampler" in cfg:
        assert DATA_SAMPLERS.get(cfg.data_sampler.type) is not None
        assert cfg.data.multi_scale


def test_embedded_config_builds(embedded_root):
    cfg = Config.fromfile(CONFIG_DIR / "embedded_32.py")
    assert cfg.data.max_length == EMBEDDED_MAX_LENGTH
    dataset = DATASETS.build(dict(cfg.data, root=str(embedded_root)))
    codec = CODECS.build(cfg.codec)
    assert dataset[0]["vae_feat"].shape[0] == 2 * codec.latent_channels


def test_ms_sampler_builds_like_the_trainer():
    cfg = Config.fromfile(CONFIG_DIR / "internal_1024_ms.py")
    extra = dict(dataset_ratios=[1.0, 0.5, 1.0, 0.5], batch_size=2, seed=0, rank=0, world_size=1)
    sampler = DATA_SAMPLERS.build(dict(cfg.data_sampler, **extra))
    assert sorted(map(sorted, sampler)) == [[0, 2], [1, 3]]
