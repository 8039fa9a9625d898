"""The committed LCM student is what `make lcm-student` produces from configs/lcm/tiny_lcm.py and the committed
teacher."""

import json
from pathlib import Path

import torch
from mmengine.config import Config
from safetensors import safe_open

from diffusion.build import weight_sources
from diffusion.experiments.assets import LCM_CONFIG, LCM_DIR, config_hash, file_hash
from diffusion.model.io import load_model_weights
from diffusion.registry import MODELS

ROOT = Path(__file__).resolve().parents[2]
WEIGHTS = LCM_DIR / "model.safetensors"


def test_asset_matches_config_and_teacher_and_loads():
    cfg = Config.fromfile(str(LCM_CONFIG))
    meta = json.loads((LCM_DIR / "meta.json").read_text())
    assert meta["config_sha256"] == config_hash(cfg), "config changed since distillation: make lcm-student"
    assert meta["teacher_sha256"] == file_hash(ROOT / weight_sources(cfg).teacher), "teacher changed: make lcm-student"
    with safe_open(str(WEIGHTS), "pt") as f:  # the hash it was trained under (see meta "restamped")
        assert f.metadata()["config_sha256"] == meta.get("trained_config_sha256", meta["config_sha256"])
    assert WEIGHTS.stat().st_size <= 20e6
    model = MODELS.build(cfg.model)
    load_model_weights(model, WEIGHTS)  # strict: every key of the config's architecture is present
    assert all(torch.isfinite(p).all() for p in model.parameters())
    assert meta["steps"] == cfg.train.max_steps and meta["seed"] == cfg.train.seed
