"""One way to load weights (issue 21.5): ``load_model_weights`` loads a ControlNet's files through the ControlNet
path, and every loader given a file of another kind than its target names the file, what it holds and what to call
(it used to fail later with a misleading missing ``y_embedder.y_embedding`` or a list of unexpected keys)."""

import json

import pytest
import torch
from safetensors.torch import save_file

from diffusion.build import build_model, controlnet_on, load_model
from diffusion.engine.checkpoint import load_trainable
from diffusion.methods.lcm_distillation import add_lora
from diffusion.model.controlnet import PixArtControlNet
from diffusion.model.controlnet_io import load_teacher_weights
from diffusion.model.io import load_model_weights, read_null_caption
from tests.model.helpers import TINY_ARCH, randomize, tiny

ARCH = dict(TINY_ARCH, depth=4)
MODEL = dict(type="PixArtMS", **ARCH)


def _save(state: dict, path) -> str:
    save_file({k: v.contiguous() for k, v in state.items()}, str(path))
    return str(path)


def _controlnet(seed: int = 3) -> PixArtControlNet:
    cn = PixArtControlNet(tiny(True, depth=4), copy_blocks=2)
    randomize(cn.controlnet, std=0.05, seed=seed)
    return cn


def _files(tmp_path) -> dict:
    """One file of every kind a run or a release produces."""
    cn = _controlnet()
    lora = tiny(True, depth=4)
    add_lora(lora, 4, 4.0, ("qkv", "fc1"))
    y = torch.randn(1, 1, 16, 32)
    return dict(
        plain=_save(tiny(True, depth=4).state_dict(), tmp_path / "plain.safetensors"),
        official=_save(cn.state_dict(), tmp_path / "PixArt-ControlNet.safetensors"),
        copies=_save(cn.trainable_state_dict(), tmp_path / "copies.safetensors"),
        adapters=_save(
            {k: v for k, v in lora.state_dict().items() if "lora_" in k}, tmp_path / "adapters.safetensors"
        ),
        lora=_save(lora.state_dict(), tmp_path / "lora_full.safetensors"),
        null=_save({"y": y}, tmp_path / "null_caption.safetensors"),
    )


def test_load_model_weights_loads_every_controlnet_layout_into_a_controlnet(tmp_path):
    files, cn = _files(tmp_path), _controlnet()
    fresh = PixArtControlNet(tiny(True, std=0.3, depth=4), copy_blocks=2)
    load_model_weights(fresh, files["official"])  # the whole file: base and copies
    assert all(torch.equal(v, cn.state_dict()[k]) for k, v in fresh.state_dict().items())
    other_base = PixArtControlNet(tiny(True, std=0.3, depth=4), copy_blocks=2)
    base_before = {k: v.clone() for k, v in other_base.base_model.state_dict().items()}
    load_model_weights(other_base, files["copies"])  # the copies onto the base it holds
    assert all(torch.equal(v, base_before[k]) for k, v in other_base.base_model.state_dict().items())
    assert all(torch.equal(other_base.state_dict()[k], v) for k, v in cn.trainable_state_dict().items())
    load_model_weights(other_base, files["plain"])  # a PixArt file: the base, with fresh copies of its blocks
    assert other_base.ignores_control


@pytest.mark.parametrize(
    ("kind", "holds", "call"),
    [
        ("official", "official full ControlNet", "controlnet section"),
        ("copies", "ControlNet's trainable weights only", "controlnet section"),
        ("adapters", "LoRA adapters only", "load_model"),
        ("lora", "LoRA student with its base", "load_model"),
        ("null", "null caption file", "weights.null_caption"),
    ],
)
def test_a_plain_pixart_refuses_another_kind_of_file_saying_what_it_is(tmp_path, kind, holds, call):
    files = _files(tmp_path)
    with pytest.raises(ValueError, match=f"(?s){files[kind]} holds (a |an )?{holds}.*plain PixArt.*{call}"):
        load_model_weights(tiny(True, depth=4), files[kind])


@pytest.mark.parametrize(("kind", "holds"), [("adapters", "LoRA adapters"), ("null", "null caption")])
def test_a_controlnet_refuses_another_kind_of_file(tmp_path, kind, holds):
    files = _files(tmp_path)
    with pytest.raises(ValueError, match=f"{files[kind]} holds .*{holds}.*not ControlNet weights"):
        load_model_weights(PixArtControlNet(tiny(True, depth=4), copy_blocks=2), files[kind])


def test_folders_a_loader_gets_are_read_or_named(tmp_path):
    """A trainer step folder loads (its EMA, as load_model picks); a peft LoRA export is named with what to load."""
    step = tmp_path / "step_0000010"
    step.mkdir()
    weights = tiny(True, std=0.2, depth=4)
    _save(tiny(True, depth=4).state_dict(), step / "model.safetensors")
    _save(weights.state_dict(), step / "ema.safetensors")
    model = tiny(True, depth=4)
    load_model_weights(model, step)
    assert all(torch.equal(v, weights.state_dict()[k]) for k, v in model.state_dict().items())
    peft = tmp_path / "peft_lora"
    peft.mkdir()
    (peft / "adapter_config.json").write_text(json.dumps(dict(peft_type="LORA")))
    _save({"base_model.model.x.lora_A.weight": torch.zeros(2, 2)}, peft / "adapter_model.safetensors")
    with pytest.raises(ValueError, match="peft_lora is a peft LoRA folder.*trainer checkpoint.*LCM-LoRA config"):
        load_model_weights(model, peft)


def test_a_teacher_under_a_controlnet_is_not_the_copies_alone(tmp_path):
    files = _files(tmp_path)
    with pytest.raises(ValueError, match="weights.teacher .*copies.safetensors holds a ControlNet's trainable"):
        load_teacher_weights(_controlnet(), files["copies"])
    with pytest.raises(ValueError, match="adapters.safetensors holds LoRA adapters only"):
        load_teacher_weights(tiny(True, depth=4), files["adapters"])


def test_config_sources_of_the_wrong_kind_are_named(tmp_path):
    """weights.controlnet naming a PixArt file would have replaced weights.base silently; an adapters-only LoRA file
    as a base (e.g. a LoRA student put under a ControlNet) says how to load it; a ControlNet on a network takes no
    PixArt file as its ControlNet."""
    files = _files(tmp_path)
    cfg = dict(
        model=MODEL, weights=dict(base=files["plain"], controlnet=files["plain"]), controlnet=dict(copy_blocks=2)
    )
    with pytest.raises(ValueError, match="weights.controlnet .*plain.safetensors holds PixArt weights.*weights.base"):
        build_model(cfg)
    with pytest.raises(ValueError, match="adapters.safetensors holds LoRA adapters only.*LCM-LoRA config"):
        build_model(dict(model=MODEL, weights=dict(base=files["adapters"])))
    with pytest.raises(ValueError, match="plain.safetensors holds PixArt weights and no trained ControlNet"):
        controlnet_on(dict(model=MODEL, controlnet=dict(copy_blocks=2)), tiny(True, depth=4), files["plain"])


def test_null_caption_readers_name_a_weights_file(tmp_path):
    files = _files(tmp_path)
    with pytest.raises(KeyError, match="plain.safetensors holds no 'y' tensor: it holds PixArt weights"):
        read_null_caption(files["plain"], 16, 32)


def test_a_full_controlnet_file_takes_the_configs_null_caption_for_its_base(tmp_path):
    """PixArt-Sigma: weights.null_caption is the y_embedding of a base that comes from an official ControlNet file
    (it was only applied to a weights.base)."""
    files = _files(tmp_path)
    cfg = dict(model=MODEL, weights=dict(null_caption=files["null"]), controlnet=dict(copy_blocks=2))
    with pytest.warns(UserWarning, match="differs from the null caption file"):
        model = load_model(cfg, files["official"])
    expected = read_null_caption(files["null"], 16, 32)
    assert torch.equal(model.base_model.y_embedder.y_embedding, expected)


def test_resume_from_a_checkpoint_of_another_kind_names_it(tmp_path):
    files = _files(tmp_path)
    cn = _controlnet()
    from safetensors.torch import load_file

    with pytest.raises(KeyError, match="adapters.safetensors holds LoRA adapters only.*missing trainable keys"):
        load_trainable(cn, load_file(files["adapters"]), files["adapters"])
