"""The trainer compares the config's codec and text encoder with the caches' meta.json before step 1 (and accepts
the documented ``text_encoder.clean_caption``)."""

import json
import shutil

import numpy as np
import pytest
from PIL import Image

from diffusion.config import resolve_section
from diffusion.data import (
    AutoencoderKLCodec,
    FeatureDataset,
    PixelCodec,
    TextEncoder,
    extract_features,
    make_tiny_text_encoder,
    make_tiny_vae,
)
from diffusion.engine import Trainer, preflight
from tests.engine.standins import tiny_config

MAX_LENGTH = 6


@pytest.fixture(scope="module")
def t5(tmp_path_factory):
    return make_tiny_text_encoder(tmp_path_factory.mktemp("t5") / "t5")


def _data(root, t5, codec, clean_caption=True):
    root.mkdir(parents=True)
    Image.fromarray(np.full((16, 16, 3), 90, np.uint8)).save(root / "a.png")
    (root / "data_info.json").write_text(json.dumps([dict(path="a.png", prompt="a red circle", height=16, width=16)]))
    encoder = TextEncoder.from_pretrained(t5, max_length=MAX_LENGTH, clean_caption=clean_caption)
    extract_features(root, encoder, codec, 16, progress=False)
    return root


def _cfg(root, t5, codec, **text):
    data = dict(type="FeatureDataset", root=str(root), resolution=16, max_length=MAX_LENGTH)
    return dict(data=data, codec=codec, text_encoder=dict(path=str(t5), max_length=MAX_LENGTH, **text))


def _check(cfg):
    return preflight.check_caches(cfg, FeatureDataset(**{k: v for k, v in cfg["data"].items() if k != "type"}))


def test_clean_caption_is_a_config_key():
    section = resolve_section("text_encoder", dict(path="t5", clean_caption=False))
    assert section["clean_caption"] is False
    assert resolve_section("text_encoder", dict(path="t5"))["clean_caption"] is True  # build_text_encoder's default


def test_matching_pixel_caches_pass_and_a_mismatch_is_named(tmp_path, t5):
    root = _data(tmp_path / "data", t5, PixelCodec(downsample=2))
    assert _check(_cfg(root, t5, dict(type="PixelCodec", downsample=2, scale_factor=1.0))) == []
    with pytest.raises(ValueError, match=r"(?s)vae_features_16/meta\.json.*codec\.downsample.*cache has 2.*4.*--redo"):
        _check(_cfg(root, t5, dict(type="PixelCodec", downsample=4)))
    other = make_tiny_text_encoder(tmp_path / "other_t5", seed=1)
    with pytest.raises(ValueError, match=r"(?s)caption_features/meta\.json.*text_encoder\.path"):
        _check(_cfg(root, other, dict(type="PixelCodec", downsample=2)))
    shutil.copytree(t5, tmp_path / "same_t5")  # the same files elsewhere are the same T5
    assert _check(_cfg(root, tmp_path / "same_t5", dict(type="PixelCodec", downsample=2))) == []
    with pytest.raises(ValueError, match=r"clean_caption \(clean_caption\): cache has True, config has False"):
        _check(_cfg(root, t5, dict(type="PixelCodec", downsample=2), clean_caption=False))


def test_the_scale_factor_is_noted_not_warned(tmp_path, t5):
    # the caches hold the unscaled posterior (prepare_batch scales it): the embedded default trains at 10 on them, as
    # designed; one info line (train.log) records it, and no warning (the console) repeats it on every run
    root = _data(tmp_path / "data", t5, PixelCodec(downsample=2))
    cfg, infos = _cfg(root, t5, dict(type="PixelCodec", downsample=2, scale_factor=10.0)), []
    assert (
        preflight.check_caches(
            cfg, FeatureDataset(**{k: v for k, v in cfg["data"].items() if k != "type"}), info=infos.append
        )
        == []
    )
    (info,) = infos
    assert (
        "codec.scale_factor 10.0" in info and "vae_features_16" in info and "1.0" in info and "not a mismatch" in info
    )
    with pytest.raises(ValueError, match="codec.downsample"):  # a real mismatch beside it is still an error
        _check(_cfg(root, t5, dict(type="PixelCodec", downsample=4, scale_factor=10.0)))


def test_another_vae_or_codec_type_is_refused(tmp_path, t5):
    vae = make_tiny_vae(tmp_path / "vae0", seed=0)
    root = _data(tmp_path / "data", t5, AutoencoderKLCodec(vae))
    assert _check(_cfg(root, t5, dict(type="AutoencoderKLCodec", path=str(vae)))) == []
    make_tiny_vae(tmp_path / "vae1", seed=1)
    with pytest.raises(ValueError, match=r"(?s)vae_features_16/meta\.json.*codec\.path"):
        _check(_cfg(root, t5, dict(type="AutoencoderKLCodec", path=str(tmp_path / "vae1"))))
    with pytest.raises(ValueError, match=r"codec\.type \(codec\): cache has .AutoencoderKLCodec., config has .Pix"):
        _check(_cfg(root, t5, dict(type="PixelCodec", downsample=2)))


def test_caches_without_meta_are_a_warning(tmp_path, t5):
    root = _data(tmp_path / "data", t5, PixelCodec(downsample=2))
    for meta in root.rglob("meta.json"):
        meta.unlink()
    warnings = _check(_cfg(root, t5, dict(type="PixelCodec", downsample=2)))
    assert len(warnings) == 2 and all("no meta.json" in w for w in warnings)


def _trainer_cfg(root, t5, **text):
    cfg = _cfg(root, t5, dict(type="PixelCodec", downsample=2), **text)
    return tiny_config(codec=cfg["codec"], text_encoder=cfg["text_encoder"]) | dict(data=cfg["data"])


def test_the_trainer_refuses_a_mismatch_before_step_1(tmp_path, t5):
    root = _data(tmp_path / "data", t5, PixelCodec(downsample=2))
    other = make_tiny_text_encoder(tmp_path / "other_t5", seed=1)
    with pytest.raises(ValueError, match=r"(?s)caption_features/meta\.json.*text_encoder\.path"):
        Trainer(_trainer_cfg(root, other), tmp_path / "run")
    with pytest.raises(ValueError, match=r"text_encoder\.clean_caption"):
        Trainer(_trainer_cfg(root, t5, clean_caption=False), tmp_path / "run")


def test_a_normal_embedded_style_run_warns_nothing(tmp_path, t5, capsys):
    """Caches written at scale 1, a config training at 10 (the embedded default): one info line in train.log, no
    warning on the console."""
    root = _data(tmp_path / "data", t5, PixelCodec(downsample=2))
    cfg = _trainer_cfg(root, t5)
    cfg["codec"] = dict(cfg["codec"], scale_factor=10.0)
    trainer = Trainer(cfg, tmp_path / "run")
    trainer.logger.close()
    log = (tmp_path / "run" / "train.log").read_text()
    assert "INFO codec.scale_factor 10.0 scales the cached posteriors" in log and "WARNING" not in log
    assert "WARNING" not in capsys.readouterr().out
