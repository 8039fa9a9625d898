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


def test_a_base_of_another_architecture_leaves_no_work_dir(tmp_path):
    """The model is built (and weights.base read) after the work dir is proven writable; a failure there removes the
    dir again when the run created it, and never touches one that existed."""
    from safetensors.torch import save_file

    save_file({"weight": __import__("torch").zeros(3)}, str(tmp_path / "other.safetensors"))
    cfg = tiny_config(weights=dict(base=str(tmp_path / "other.safetensors")))
    with pytest.raises(Exception, match="other.safetensors"):
        Trainer(cfg, tmp_path / "run")
    assert not (tmp_path / "run").exists()
    (tmp_path / "kept").mkdir()
    with pytest.raises(Exception, match="other.safetensors"):
        Trainer(cfg, tmp_path / "kept")
    assert (tmp_path / "kept").is_dir()


# A small PixArt whose null caption is (1, 1, 6, 16): model_max_length 6, caption_channels 16.
PIXART = dict(
    type="PixArt_tiny", input_size=4, patch_size=2, in_channels=4, hidden_size=32, depth=1, num_heads=2,
    caption_channels=16, model_max_length=6,
)  # fmt: skip


def _null_file(path, shape, mask_len=None):
    from safetensors.torch import save_file

    tensors = {"y": __import__("torch").zeros(shape)}
    if mask_len is not None:
        tensors["y_mask"] = __import__("torch").ones(1, mask_len, dtype=__import__("torch").long)
    save_file(tensors, str(path))
    return str(path)


@pytest.mark.parametrize("shape", [(1, 1, 5, 16), (1, 1, 6, 8), (1, 1, 300, 16)])
def test_a_null_caption_file_of_another_shape_is_refused_before_the_work_dir(tmp_path, shape):
    """Issue 22.6: weights.null_caption (the model's y_embedding) of another length or width fails in the pre-run
    checks, naming the file and the shape the model needs, and no work dir is made."""
    null = _null_file(tmp_path / "null.safetensors", shape)
    cfg = tiny_config(model=PIXART, weights=dict(null_caption=null))
    with pytest.raises(ValueError, match=r"null caption file .*null\.safetensors.*needs \(1, 1, 6, 16\)"):
        Trainer(cfg, tmp_path / "run")
    assert not (tmp_path / "run").exists()
    with pytest.warns(FutureWarning, match="config key null_caption is now weights.null_caption"):
        with pytest.raises(ValueError, match=r"needs \(1, 1, 6, 16\)"):
            Trainer(tiny_config(model=PIXART, null_caption=null), tmp_path / "run")  # the older top-level key


@pytest.mark.parametrize(
    ("shape", "mask_len"), [((1, 1, 5, 16), None), ((1, 1, 6, 8), None), ((6, 16), None), ((1, 1, 6, 16), 5)]
)
def test_the_lcm_methods_null_caption_file_of_another_shape_is_refused_before_the_work_dir(tmp_path, shape, mask_len):
    """Issue 22.6: the LoRA recipe's method.null_caption (the teacher's unconditional branch, under the captions'
    mask) must be (1, 1, text_encoder.max_length, caption_channels); it failed at the first forward."""
    null = _null_file(tmp_path / "t5_empty.safetensors", shape, mask_len)
    method = dict(type="LCMDistillation", null_caption=null)
    cfg = tiny_config(model=PIXART, method=method, weights=dict(teacher=str(tmp_path / "teacher.safetensors")))
    cfg["text_encoder"] = dict(path=str(tmp_path / "t5"), max_length=6)
    with pytest.raises(ValueError, match=r"method.null_caption .*t5_empty\.safetensors.*needs y \(1, 1, 6, 16\)"):
        Trainer(cfg, tmp_path / "run")
    assert not (tmp_path / "run").exists()


def test_a_missing_null_caption_file_or_teacher_is_refused_before_the_work_dir(tmp_path):
    method = dict(type="LCMDistillation", null_caption=str(tmp_path / "gone.safetensors"))
    cfg = tiny_config(model=PIXART, method=method, weights=dict(teacher=str(tmp_path / "teacher.safetensors")))
    with pytest.raises(FileNotFoundError, match="method.null_caption .*gone.safetensors.*make_null_caption"):
        Trainer(cfg, tmp_path / "run")
    scratch = tiny_config(model=PIXART, weights=dict(null_caption=str(tmp_path / "gone.safetensors")))
    with pytest.raises(FileNotFoundError, match="weights.null_caption .*gone.safetensors.*from scratch"):
        Trainer(scratch, tmp_path / "run")
    with pytest.raises(KeyError, match="distils a pretrained teacher.*weights.teacher"):
        Trainer(tiny_config(model=PIXART, method=dict(type="LCMDistillation")), tmp_path / "run")
    with pytest.raises(KeyError, match="weights.teacher is set but method EngineMSELoss distils no teacher"):
        Trainer(tiny_config(weights=dict(base="a.safetensors", teacher="b.safetensors")), tmp_path / "run")
    assert not (tmp_path / "run").exists()
