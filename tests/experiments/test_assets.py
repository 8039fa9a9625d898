"""``diffusion.experiments.assets.config_hash``: the asset tests' notion of "the config that trained this" — it moves
with every value that trains and with nothing else."""

from pathlib import Path

from mmengine.config import Config

from diffusion.experiments.assets import config_hash

ROOT = Path(__file__).resolve().parents[2]
CONFIG = str(ROOT / "configs/lcm/tiny_lcm.py")


def _hash(**changes) -> str:
    cfg = Config.fromfile(CONFIG)
    cfg.merge_from_dict(changes)
    return config_hash(cfg)


def test_hash_ignores_defaults_spelled_out_and_what_a_run_only_shows():
    base = _hash()
    assert _hash(**{"weights.base": None, "train.max_nan_steps": 5, "model.pe_interpolation": 1.0}) == base
    assert _hash(**{"validation.control": "embedded", "validation.every": 7, "log.every": 3}) == base


def test_hash_moves_with_every_value_that_trains():
    base = _hash()
    changed = [
        _hash(**{"method.w": 3.5}),
        _hash(**{"weights.base": "assets/tiny_teacher/model.safetensors", "weights.teacher": "other.safetensors"}),
        _hash(**{"train.max_steps": 301}),
        _hash(**{"optimizer.lr": 1e-4}),
        _hash(**{"model.depth": 4}),
        _hash(**{"weights.teacher": "other.safetensors"}),
    ]
    assert base not in changed and len(set(changed)) == len(changed)
