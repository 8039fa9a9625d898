"""diffusion/model/io.py: a checkpoint that cannot be loaded is refused naming its file and what differs (the
mismatching tensors with both shapes, the config keys that likely differ), in every format load_state reads."""

import pytest
import torch
from safetensors.torch import save_file

from diffusion.model.diffusers_format import save_diffusers
from diffusion.model.io import load_model_weights, load_state_into
from tests.model.helpers import tiny


def _save(model: torch.nn.Module, path):
    if path.suffix == ".safetensors":
        save_file(model.state_dict(), str(path))
    else:
        torch.save({"state_dict": model.state_dict()}, path)
    return path


@pytest.mark.parametrize("suffix", [".safetensors", ".pth"])
def test_wider_checkpoint_names_file_tensors_shapes_and_config_key(tmp_path, suffix):
    path = _save(tiny(True, hidden_size=96), tmp_path / f"wide{suffix}")
    with pytest.raises(ValueError, match=f"wide\\{suffix}") as err:
        load_model_weights(tiny(True), path)
    msg = str(err.value)
    assert "x_embedder.proj.weight" in msg and "(96, 4, 2, 2)" in msg and "(48, 4, 2, 2)" in msg
    assert "hidden_size" in msg


@pytest.mark.parametrize(
    ("arch", "config_key"),
    [
        (dict(in_channels=12), "in_channels"),
        (dict(patch_size=1), "patch_size"),
        (dict(caption_channels=64), "caption_channels"),
        (dict(depth=3), "depth"),
        (dict(depth=1), "depth"),
    ],
)
def test_other_architecture_names_the_config_key(tmp_path, arch, config_key):
    path = _save(tiny(True, **arch), tmp_path / "other.safetensors")
    with pytest.raises(ValueError, match=config_key) as err:
        load_model_weights(tiny(True), path)
    assert "other.safetensors" in str(err.value)


def test_already_read_state_of_another_shape_is_named_not_a_raw_runtime_error():
    with pytest.raises(ValueError, match="from/somewhere.safetensors.*hidden_size"):
        load_state_into(tiny(True), tiny(True, hidden_size=96).state_dict(), "from/somewhere.safetensors")


def test_unreadable_files_are_named(tmp_path):
    good = _save(tiny(True), tmp_path / "good.safetensors").read_bytes()
    (tmp_path / "cut.safetensors").write_bytes(good[:100])
    with pytest.raises(ValueError, match="cut.safetensors.*cannot be read"):
        load_model_weights(tiny(True), tmp_path / "cut.safetensors")
    with pytest.raises(FileNotFoundError, match="gone.safetensors"):
        load_model_weights(tiny(True), tmp_path / "gone.safetensors")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="empty.*not a diffusers transformer folder"):
        load_model_weights(tiny(True), tmp_path / "empty")


def test_diffusers_folder_of_another_shape_or_corrupt_is_named(tmp_path):
    wide = tiny(True, hidden_size=96)
    save_diffusers(wide, tmp_path / "hf", wide.state_dict())
    with pytest.raises(ValueError, match="hf.*hidden_size"):
        load_model_weights(tiny(True), tmp_path / "hf")
    weights = next((tmp_path / "hf").glob("*.safetensors"))
    weights.write_bytes(weights.read_bytes()[:64])
    with pytest.raises(ValueError, match="cannot be read"):
        load_model_weights(tiny(True), tmp_path / "hf")


def test_controlnet_checkpoint_into_plain_model_says_so():
    with pytest.raises(ValueError, match="cn.safetensors holds a ControlNet's trainable weights.*controlnet section"):
        load_state_into(tiny(True), {"controlnet.0.before_proj.weight": torch.zeros(48, 48)}, "cn.safetensors")
