"""diffusion/build.py for ControlNet configs: the ``controlnet`` section wraps the base holding ``weights.base``;
``load_model`` reads the official full layout and a trainable-weights checkpoint on top of ``weights.base``."""

import pytest
import torch
from safetensors.torch import save_file

from diffusion.build import build_model, load_model
from diffusion.config import resolve_section
from diffusion.model.controlnet import PixArtControlNet, PixArtControlNetUNet
from diffusion.registry import MODELS
from tests.model.helpers import inputs, randomize

MODEL = dict(
    type="PixArtMS_tiny", input_size=8, hidden_size=48, depth=4, num_heads=3, caption_channels=32, model_max_length=16
)


@pytest.fixture(scope="module")
def base_file(tmp_path_factory):
    base = randomize(MODELS.build(dict(MODEL)), seed=2)
    path = tmp_path_factory.mktemp("base") / "base.safetensors"
    save_file(base.state_dict(), str(path))
    return path, base


def _cfg(base_path, weights=None, **controlnet):
    named = {"base": None if base_path is None else str(base_path), **(weights or {})}
    return dict(model=MODEL, weights=named, controlnet={"copy_blocks": 2, **controlnet})


def test_build_wraps_the_loaded_base_and_copies_its_blocks(base_file):
    path, base = base_file
    model = build_model(_cfg(path))
    assert isinstance(model, PixArtControlNet) and model.copy_blocks == 2
    for k, v in base.state_dict().items():
        assert torch.equal(model.base_model.state_dict()[k], v), k
    for i, control in enumerate(model.controlnet):
        for k, v in base.blocks[i].state_dict().items():
            assert torch.equal(control.copied_block.state_dict()[k], v), (i, k)
    unet = build_model(_cfg(path, topology="unet", copy_blocks=None))
    assert isinstance(unet, PixArtControlNetUNet) and unet.copy_blocks == 2
    x, t, y, mask, info = inputs()
    with torch.no_grad():
        assert torch.equal(model.eval()(x, t, y, mask, info, c=torch.randn_like(x)), base.eval()(x, t, y, mask, info))


def test_controlnet_section_keys_are_checked():
    with pytest.raises(KeyError, match="copy_block"):
        resolve_section("controlnet", dict(copy_block=3))
    with pytest.raises(KeyError, match="topology"):
        resolve_section("controlnet", dict(topology="resnet"))
    assert resolve_section("controlnet", {}) == dict(copy_blocks=13, topology="transformer")


def _trained(path):
    model = build_model(_cfg(path))
    g = torch.Generator().manual_seed(4)
    with torch.no_grad():
        for p in model.controlnet.parameters():
            p.add_(torch.randn(p.shape, generator=g) * 0.1)
    return model


def test_load_model_reads_official_full_and_trainable_checkpoints(base_file, tmp_path):
    path, _ = base_file
    trained = _trained(path)
    full = {**trained.state_dict(), "base_model.pos_embed": torch.zeros(1, 16, 48)}
    torch.save({"state_dict": full}, tmp_path / "PixArt-ControlNet.pth")
    save_file(trained.trainable_state_dict(), str(tmp_path / "model.safetensors"))  # a trainer step folder
    expected = trained.state_dict()
    no_base = _cfg(None)
    for cfg, checkpoint in [(no_base, tmp_path / "PixArt-ControlNet.pth"), (_cfg(path), tmp_path)]:
        model = load_model(cfg, checkpoint)
        assert not model.training and not any(p.requires_grad for p in model.parameters())
        assert all(torch.equal(model.state_dict()[k], v) for k, v in expected.items())
    # weights.controlnet: the same weights, from the config alone
    model = load_model(_cfg(path, weights=dict(controlnet=str(tmp_path / "model.safetensors"))))
    assert all(torch.equal(model.state_dict()[k], v) for k, v in expected.items())
    with pytest.raises(ValueError, match="trainable weights.*weights.base, which is not set"):
        load_model(no_base, tmp_path)
    partial = trained.trainable_state_dict()
    partial.pop("controlnet.1.after_proj.weight")
    save_file(partial, str(tmp_path / "broken.safetensors"))
    with pytest.raises(KeyError, match="broken.safetensors.*controlnet.1.after_proj.weight"):
        load_model(_cfg(path), tmp_path / "broken.safetensors")


def test_export_writes_the_official_full_layout(base_file, tmp_path):
    """``tools/convert_controlnet.py``: a trainable-weights checkpoint -> the released files' full layout."""
    from mmengine.config import Config

    from tests.commands import load_command

    path, _ = base_file
    trained = _trained(path)
    save_file(trained.trainable_state_dict(), str(tmp_path / "trainable.safetensors"))
    Config(_cfg(path)).dump(str(tmp_path / "controlnet.py"))
    argv = ["--config", str(tmp_path / "controlnet.py"), "--checkpoint", str(tmp_path / "trainable.safetensors")]
    out = load_command("tools/convert_controlnet.py").main([*argv, "--out", str(tmp_path / "ControlNet.pth")])
    state = torch.load(out, weights_only=True)["state_dict"]
    assert state.keys() == trained.state_dict().keys()
    assert any(k.startswith("base_model.") for k in state) and "controlnet.0.before_proj.weight" in state
    model = load_model(_cfg(None), out)  # the full file needs no base
    assert all(torch.equal(model.state_dict()[k], v) for k, v in trained.state_dict().items())


def test_a_full_controlnet_file_on_another_base_keeps_weights_base_as_the_base(base_file, tmp_path):
    """The controllable LCM: a ControlNet trained (and released in full) on PixArt-alpha, put on an LCM student's
    base given as weights.base. The base stays weights.base, the copies come from the file, and the swap is
    announced."""
    path, _ = base_file
    trained = _trained(path)  # copies trained on the base of base_file
    torch.save({"state_dict": trained.state_dict()}, tmp_path / "PixArt-ControlNet.pth")
    student = randomize(MODELS.build(dict(MODEL)), seed=9)
    save_file(student.state_dict(), str(tmp_path / "student.safetensors"))
    cfg = _cfg(tmp_path / "student.safetensors")
    with pytest.warns(UserWarning, match="carries its own base.*only the file's ControlNet copies"):
        model = load_model(cfg, tmp_path / "PixArt-ControlNet.pth")
    assert all(torch.equal(model.base_model.state_dict()[k], v) for k, v in student.state_dict().items())
    copies = trained.trainable_state_dict()
    assert all(torch.equal(model.state_dict()[k], v) for k, v in copies.items())
    with pytest.warns(UserWarning, match="carries its own base"):
        built = build_model(
            _cfg(tmp_path / "student.safetensors", weights=dict(controlnet=str(tmp_path / "PixArt-ControlNet.pth")))
        )
    assert all(torch.equal(built.state_dict()[k], v) for k, v in model.state_dict().items())
    import warnings

    with warnings.catch_warnings():  # the file's own base under its own base: nothing to announce
        warnings.simplefilter("error")
        load_model(_cfg(path), tmp_path / "PixArt-ControlNet.pth")


def test_controlnet_file_of_another_width_is_named(base_file, tmp_path):
    wide = build_model(dict(model=dict(MODEL, hidden_size=96), controlnet={"copy_blocks": 2}))
    save_file(wide.trainable_state_dict(), str(tmp_path / "wide_cn.safetensors"))
    with pytest.raises(ValueError, match=r"wide_cn\.safetensors.*hidden_size"):
        load_model(_cfg(base_file[0]), tmp_path / "wide_cn.safetensors")
