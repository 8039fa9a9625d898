"""The committed tiny ControlNet is what `make controlnet` produces from configs/controlnet/tiny_controlnet.py, holds
only the trainable weights, and loads on the committed tiny teacher."""

import json
from pathlib import Path

import torch
from mmengine.config import Config
from safetensors import safe_open

from diffusion.build import load_model, weight_sources
from diffusion.experiments.assets import CONTROLNET_CONFIG, CONTROLNET_DIR, config_hash, file_hash

ROOT = Path(__file__).resolve().parents[2]


def test_asset_matches_config_and_loads(monkeypatch):
    monkeypatch.chdir(ROOT)  # the config's weights.base is relative to the repository
    weights, meta = CONTROLNET_DIR / "model.safetensors", json.loads((CONTROLNET_DIR / "meta.json").read_text())
    cfg = Config.fromfile(str(CONTROLNET_CONFIG))
    assert meta["config_sha256"] == config_hash(cfg), (
        "config changed since the ControlNet was trained: make controlnet"
    )
    assert meta["teacher_sha256"] == file_hash(weight_sources(cfg).base), "the teacher changed: run make controlnet"
    with safe_open(str(weights), "pt") as f:
        assert f.metadata()["config_sha256"] == meta.get("trained_config_sha256", meta["config_sha256"])
        assert all(k.startswith("controlnet.") for k in f.keys())
    assert weights.stat().st_size <= 20e6
    model = load_model(cfg, weights)  # strict: every trainable key present, the base from weights.base
    assert all(torch.isfinite(p).all() for p in model.parameters())
    assert meta["steps"] == cfg.train.max_steps and meta["seed"] == cfg.train.seed
