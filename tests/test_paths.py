"""Paths written inside configs resolve from any folder: relative to the current folder when the file is there,
else relative to the checkout (the repo's configs name committed assets), else an error naming both places."""

import pytest
from mmengine.config import Config

from diffusion.build import build_model
from diffusion.experiments.assets import LCM_CONFIG, config_hash
from diffusion.paths import ROOT, config_path


def test_a_committed_asset_resolves_in_the_checkout_from_another_folder(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert config_path("assets/tiny_teacher/model.safetensors") == ROOT / "assets/tiny_teacher/model.safetensors"


def test_a_file_in_the_current_folder_wins(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "assets/tiny_teacher").mkdir(parents=True)
    (tmp_path / "assets/tiny_teacher/model.safetensors").write_bytes(b"mine")
    found = config_path("assets/tiny_teacher/model.safetensors")
    assert found.resolve() == (tmp_path / "assets/tiny_teacher/model.safetensors").resolve()
    assert config_path(tmp_path / "elsewhere.pth", required=False) == tmp_path / "elsewhere.pth"  # absolute: as is


def test_a_path_in_neither_place_names_both(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(FileNotFoundError) as err:
        config_path("assets/nothing.safetensors", "weights.controlnet")
    message = str(err.value)
    assert "weights.controlnet" in message
    assert (
        str(tmp_path / "assets/nothing.safetensors") in message and str(ROOT / "assets/nothing.safetensors") in message
    )
    assert (
        config_path("assets/nothing.safetensors", required=False).resolve() == tmp_path / "assets/nothing.safetensors"
    )


def test_the_trainer_builds_the_lcm_config_from_another_folder_and_its_hash_stays(tmp_path, monkeypatch):
    cfg = Config.fromfile(str(LCM_CONFIG))
    before = config_hash(cfg)
    monkeypatch.chdir(tmp_path)
    model = build_model(cfg)  # weights.teacher = "assets/tiny_teacher/model.safetensors", found in the checkout
    assert sum(p.numel() for p in model.parameters()) > 0
    assert config_hash(cfg) == before == config_hash(Config.fromfile(str(LCM_CONFIG)))
