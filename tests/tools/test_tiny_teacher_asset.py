"""The committed tiny teacher is exactly what `make teacher` produces from configs/pixart/tiny_teacher.py."""

import json

import torch
from mmengine.config import Config
from safetensors import safe_open

from diffusion.experiments.assets import TEACHER_CONFIG, TEACHER_DIR, config_hash
from diffusion.model.io import load_model_weights
from diffusion.registry import MODELS


def test_asset_matches_config_and_loads():
    weights, meta_path = TEACHER_DIR / "model.safetensors", TEACHER_DIR / "meta.json"
    cfg = Config.fromfile(str(TEACHER_CONFIG))
    meta = json.loads(meta_path.read_text())
    assert meta["config_sha256"] == config_hash(cfg), "config changed since the teacher was trained: run make teacher"
    with safe_open(str(weights), "pt") as f:
        assert f.metadata()["config_sha256"] == meta.get("trained_config_sha256", meta["config_sha256"])
    assert weights.stat().st_size <= 20e6
    model = MODELS.build(cfg.model)
    load_model_weights(model, weights)  # strict: every key of the config's architecture is present
    assert all(torch.isfinite(p).all() for p in model.parameters())
    assert meta["steps"] == cfg.train.max_steps and meta["seed"] == cfg.train.seed
