"""Weights with names (issue 22.3): each weight source has its own key of ``weights`` (base, controlnet, teacher,
null_caption), resolved by ``diffusion.build.weight_sources`` alone; the keys of older configs (one ``load_from`` that
meant the teacher, the base or the student's base, ``controlnet.load_from``, ``method.teacher_load_from``, the
top-level ``null_caption``) are read at their new names with one FutureWarning each; shipped configs use the new
keys; the tools ask build.py for the network they want by name."""

import warnings
from pathlib import Path

import pytest
import torch
from mmengine.config import Config
from safetensors.torch import load_file, save_file

from diffusion.build import (
    build_method,
    build_model,
    teacher_config,
    weight_sources,
    with_weights,
    without_controlnet,
)
from diffusion.experiments.assets import config_hash
from diffusion.registry import MODELS
from tests.model.helpers import randomize

ROOT = Path(__file__).resolve().parents[1]
MODEL = dict(type="PixArt_tiny", input_size=4, patch_size=2, in_channels=4, hidden_size=32, depth=2, num_heads=2,
             caption_channels=16, model_max_length=6)  # fmt: skip
OLD = {
    "load_from": ("base", "s.safetensors"),
    "controlnet.load_from": ("controlnet", "c.safetensors"),
    "method.teacher_load_from": ("teacher", "t.safetensors"),
    "null_caption": ("null_caption", "n.safetensors"),
}


def _old_config() -> dict:
    return dict(
        model=MODEL,
        load_from="s.safetensors",
        controlnet=dict(copy_blocks=1, load_from="c.safetensors"),
        method=dict(type="LCMDistillation", teacher_load_from="t.safetensors"),
        null_caption="n.safetensors",
    )


def test_each_old_key_reads_at_its_new_home_with_one_message_naming_both():
    with pytest.warns(FutureWarning) as caught:
        old = weight_sources(_old_config())
    messages = [str(w.message) for w in caught]
    for key, (new, _) in OLD.items():
        assert sum(f"config key {key} is now weights.{new} " in m for m in messages) == 1, (key, messages)
    new = dict(model=MODEL, controlnet=dict(copy_blocks=1), method=dict(type="LCMDistillation"))
    new["weights"] = {name: path for name, path in OLD.values()}
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert weight_sources(new) == old
    assert (old.base, old.controlnet, old.teacher, old.null_caption) == tuple(p for _, p in OLD.values())
    assert old.teacher_apart


def test_resolution_of_base_and_teacher():
    """A student starts as its teacher: weights.teacher alone is the base too; weights.base alone is the teacher of a
    distilling method (the older load_from's meaning); both named: the teacher is loaded apart (route (b))."""
    lcm = weight_sources(dict(weights=dict(teacher="t")))
    assert (lcm.base, lcm.teacher, lcm.teacher_apart) == ("t", "t", False)
    controlnet = weight_sources(dict(weights=dict(base="b")))
    assert (controlnet.base, controlnet.teacher, controlnet.teacher_apart) == ("b", "b", False)
    route_b = weight_sources(dict(weights=dict(base="b", teacher="t")))
    assert (route_b.base, route_b.teacher, route_b.teacher_apart) == ("b", "t", True)
    assert weight_sources({}) == weight_sources(dict(weights=None))


def test_bad_weights_keys_are_named():
    with pytest.raises(KeyError, match=r"unknown key\(s\) \['lora'\] in config section 'weights'.*'base'"):
        weight_sources(dict(weights=dict(lora="a.safetensors")))
    with pytest.raises(ValueError, match="load_from = 'x' and weights.base = 'y' disagree.*set weights.base only"):
        weight_sources(dict(load_from="x", weights=dict(base="y")))
    with pytest.warns(FutureWarning):  # the same file under both names: read once
        assert weight_sources(dict(load_from="x", weights=dict(base="x"))).base == "x"
    with pytest.raises(KeyError, match="unknown weight source"):
        with_weights({}, student="x")


def test_no_shipped_config_uses_an_old_key():
    """Every config in configs/ is in the current form: reading its weights warns nothing, and what it names is
    what its method needs (an LCM config its teacher, a ControlNet config its base)."""
    for path in sorted((ROOT / "configs").rglob("*.py")):
        if "_base_" in path.parts:
            continue
        cfg = Config.fromfile(str(path))
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            weights = weight_sources(cfg)
        assert "load_from" not in cfg and "load_from" not in (cfg.get("controlnet") or {}), path.name
        if cfg.method["type"] == "LCMDistillation":
            assert weights.teacher is not None, path.name
        if cfg.get("controlnet") is not None:
            assert weights.base is not None, path.name


def test_an_old_config_builds_trains_and_hashes_as_its_migrated_form(tmp_path):
    """The same sources under the old and the new names: the same network, the same teacher in the method, the same
    config_hash (the committed assets' hashes stay valid)."""
    files = {}
    for name, seed in (("student", 1), ("teacher", 2)):
        files[name] = str(tmp_path / f"{name}.safetensors")
        save_file(randomize(MODELS.build(dict(MODEL)), std=0.05, seed=seed).state_dict(), files[name])
    cn = build_model(dict(model=MODEL, weights=dict(base=files["student"]), controlnet=dict(copy_blocks=1)))
    randomize(cn.controlnet, std=0.05, seed=3)
    files["controlnet"] = str(tmp_path / "controlnet.safetensors")
    save_file(cn.trainable_state_dict(), files["controlnet"])
    common = "model = dict(type='PixArt_tiny', input_size=4, patch_size=2, in_channels=4, hidden_size=32, depth=2, "
    common += "num_heads=2, caption_channels=16, model_max_length=6, class_dropout_prob=0.0)\n"
    (tmp_path / "old.py").write_text(
        common + f"load_from = {files['student']!r}\n"
        f"controlnet = dict(copy_blocks=1, topology='transformer', load_from={files['controlnet']!r})\n"
        f"method = dict(type='LCMDistillation', teacher_load_from={files['teacher']!r})\n"
    )
    (tmp_path / "new.py").write_text(
        common + f"weights = dict(base={files['student']!r}, controlnet={files['controlnet']!r}, "
        f"teacher={files['teacher']!r})\ncontrolnet = dict(copy_blocks=1, topology='transformer')\n"
        "method = dict(type='LCMDistillation')\n"
    )
    with pytest.warns(FutureWarning):
        old_cfg = Config.fromfile(str(tmp_path / "old.py"))
        old_model = build_model(old_cfg)
        old_method = build_method(old_cfg, old_model)
        old_hash = config_hash(old_cfg)
    new_cfg = Config.fromfile(str(tmp_path / "new.py"))
    new_model = build_model(new_cfg)
    new_method = build_method(new_cfg, new_model)
    for a, b in ((old_model, new_model), (old_method.teacher, new_method.teacher)):
        assert all(torch.equal(v, b.state_dict()[k]) for k, v in a.state_dict().items())
    teacher, student = load_file(files["teacher"]), load_file(files["student"])
    assert torch.equal(new_method.teacher.base_model.blocks[1].mlp.fc1.weight, teacher["blocks.1.mlp.fc1.weight"])
    assert torch.equal(new_model.base_model.blocks[1].mlp.fc1.weight, student["blocks.1.mlp.fc1.weight"])
    assert config_hash(new_cfg) == old_hash
    # an LCM student's start named as its teacher or as its base (the older load_from): one hash
    lcm = Config.fromfile(str(ROOT / "configs/lcm/tiny_lcm.py"))
    as_base = Config.fromfile(str(ROOT / "configs/lcm/tiny_lcm.py"))
    as_base.weights = dict(base=lcm.weights.teacher)
    assert config_hash(lcm) == config_hash(as_base)


def test_the_networks_a_tool_asks_for_by_name():
    """teacher_config: the teacher network (weights.teacher as its base, no student-only w-embedding, the ControlNet
    kept); without_controlnet: the base alone; with_weights: another source, the config unchanged."""
    route_b = Config.fromfile(str(ROOT / "configs/controlnet/tiny_controlnet_lcm.py"))
    teacher = teacher_config(route_b)
    assert weight_sources(teacher) == weight_sources(
        dict(weights=dict(base="assets/tiny_teacher/model.safetensors", controlnet=route_b.weights.controlnet))
    )
    assert teacher["controlnet"] == route_b.controlnet
    alone = without_controlnet(route_b)
    assert alone["controlnet"] is None and weight_sources(alone).controlnet is None
    assert weight_sources(alone).base == route_b.weights.base
    wembed = Config.fromfile(str(ROOT / "configs/lcm/pixartms_xl2_img1024_lcm_wembed.py"))
    assert wembed.model.guidance_embedding and "guidance_embedding" not in teacher_config(wembed)["model"]
    assert weight_sources(teacher_config(wembed)).base == wembed.weights.teacher
    moved = with_weights(Config.fromfile(str(ROOT / "configs/controlnet/tiny_controlnet.py")), base="student.pth")
    assert weight_sources(moved).base == "student.pth" and "weights" in moved
    assert Config.fromfile(str(ROOT / "configs/controlnet/tiny_controlnet.py")).weights.base != "student.pth"


def test_a_teacher_for_a_method_that_distils_none_is_refused():
    cfg = dict(model=MODEL, weights=dict(base="a", teacher="b"), method=dict(type="DiffusionLoss"))
    with pytest.raises(KeyError, match="weights.teacher is set but method DiffusionLoss distils no teacher"):
        build_method(cfg, MODELS.build(dict(MODEL)))
