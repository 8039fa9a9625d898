"""diffusion/engine/preflight.py: a misspelt model / method / data_sampler key is refused before the work dir is
created (a failed run leaves no empty run directory behind)."""

import pytest

from diffusion.engine.trainer import Trainer
from tests.engine.standins import tiny_config


@pytest.mark.parametrize(
    ("overrides", "name"),
    [
        (dict(model=dict(type="EngineTinyNet", hiden_size=3)), "hiden_size"),
        (dict(method=dict(type="EngineMSELoss", typo=1)), "typo"),
        (dict(data_sampler=dict(type="AspectRatioBatchSampler", tabel="ASPECT_RATIO_256")), "tabel"),
    ],
)
def test_misspelt_constructor_key_leaves_no_work_dir(tmp_path, overrides, name):
    with pytest.raises(KeyError, match=name):
        Trainer(tiny_config(**overrides), tmp_path / "run")
    assert not (tmp_path / "run").exists()


def test_a_load_from_of_another_architecture_leaves_no_work_dir(tmp_path):
    """The model is built (and load_from read) after the work dir is proven writable; a failure there removes the
    dir again when the run created it, and never touches one that existed."""
    from safetensors.torch import save_file

    save_file({"weight": __import__("torch").zeros(3)}, str(tmp_path / "other.safetensors"))
    cfg = tiny_config(load_from=str(tmp_path / "other.safetensors"))
    with pytest.raises(Exception, match="other.safetensors"):
        Trainer(cfg, tmp_path / "run")
    assert not (tmp_path / "run").exists()
    (tmp_path / "kept").mkdir()
    with pytest.raises(Exception, match="other.safetensors"):
        Trainer(cfg, tmp_path / "kept")
    assert (tmp_path / "kept").is_dir()
