"""Every leaf config under configs/ (not ``_base_``) resolves with the trainer's schema and its model and method
build on the meta device (no memory, so the XL configs are checked too). New configs are found by walking the
folder."""

from pathlib import Path

import pytest
import torch
from mmengine.config import Config

from diffusion.build import weight_sources
from diffusion.config import SECTION_DEFAULTS, check_top_level, resolve_section
from diffusion.registry import DATASETS, METHODS, MODELS

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
LEAVES = sorted(p for p in CONFIGS.rglob("*.py") if "_base_" not in p.relative_to(CONFIGS).parts)


def test_there_are_leaf_configs():
    assert len(LEAVES) >= 8


@pytest.mark.parametrize("path", LEAVES, ids=[str(p.relative_to(CONFIGS)) for p in LEAVES])
def test_leaf_config_resolves_and_builds_on_meta(path):
    import diffusion.data  # noqa: F401  (registers the datasets)
    import diffusion.methods  # noqa: F401  (registers the methods)

    cfg = Config.fromfile(str(path))
    check_top_level(cfg)
    for section in SECTION_DEFAULTS:
        if cfg.get(section) is not None or section in ("train",):
            resolve_section(section, cfg.get(section))
    method_cls = METHODS.get(cfg.method["type"])
    assert method_cls is not None, cfg.method["type"]
    assert DATASETS.get(cfg.data["type"]) is not None, cfg.data["type"]
    if getattr(method_cls, "requires_teacher", False):
        assert weight_sources(cfg).teacher, f"{path.name}: {cfg.method['type']} needs weights.teacher"
    with torch.device("meta"):
        model = MODELS.build(dict(cfg.model))
        if cfg.get("controlnet") is not None:
            from diffusion.model.controlnet import wrap_controlnet

            section = resolve_section("controlnet", cfg.controlnet)  # no weights key: they are weights.*
            model = wrap_controlnet(model, section["topology"], section["copy_blocks"])
    # LoRA injection and frozen copies of a meta model (weights files are not read here: a meta model holds none,
    # and a T5("") null caption file is made on the machine that trains)
    files = {k: v for k, v in (("null_caption", "learned"),) if k in cfg.method}
    method = METHODS.build({**cfg.method, "model": model, **files})
    assert sum(p.numel() for p in model.parameters() if p.requires_grad) > 0
    assert method.sampler_defaults() is not None
    if cfg.method.get("guidance_embedding"):
        assert model.w_embedder is not None
