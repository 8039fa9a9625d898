"""diffusion/build.py: a checkpoint that does not fit the config is refused naming the file, on every way in
(``load_model`` for tools/sample.py and the converters, ``build_model``'s ``weights.base`` for the trainer)."""

from pathlib import Path

import pytest
from mmengine.config import Config

from diffusion.build import build_model, load_model

ROOT = Path(__file__).resolve().parents[1]
TEACHER = str(ROOT / "assets/tiny_teacher/model.safetensors")


def test_teacher_checkpoint_under_a_config_of_another_shape_is_named():
    cfg = Config.fromfile(str(ROOT / "configs/pixart/tiny_own_images.py"))
    with pytest.raises(ValueError, match=r"tiny_teacher/model\.safetensors.*in_channels"):
        load_model(cfg, TEACHER)
    cfg.weights = dict(base=TEACHER)
    with pytest.raises(ValueError, match=r"tiny_teacher/model\.safetensors.*hidden_size"):
        build_model(cfg)


def test_controlnet_checkpoint_under_a_plain_config_says_so():
    cfg = Config.fromfile(str(ROOT / "configs/pixart/tiny_teacher.py"))
    with pytest.raises(ValueError, match="ControlNet's trainable weights.*plain PixArt.*configs/controlnet/"):
        load_model(cfg, ROOT / "assets/tiny_controlnet/model.safetensors")
