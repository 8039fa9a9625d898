"""tools/extract_features.py --control {hed,canny,image}: the annotator options, the HED file check before anything
loads, and HED / Canny control latents end to end (the library side: tests/data/test_control_features.py)."""

import json

import numpy as np
import pytest
import torch

from diffusion.data import PixelCodec, feature_name, make_tiny_text_encoder
from diffusion.data.annotators import HEDAnnotator, to_control_image
from diffusion.data.embedded import make_embedded_data
from diffusion.data.features import latent_dir
from diffusion.data.images import load_image
from tests.commands import load_command
from tests.data.helpers import write_random_hed

command = load_command("tools/extract_features.py")
main, parse_args = command.main, command.parse_args

MAX_LENGTH = 66
N = 3


@pytest.fixture(scope="module")
def text_encoder_dir(tmp_path_factory):
    return make_tiny_text_encoder(tmp_path_factory.mktemp("t5") / "t5")


@pytest.fixture()
def base_args(tmp_path, text_encoder_dir):
    make_embedded_data(tmp_path / "data", num=N, seed=0)
    args = ["--data-root", str(tmp_path / "data"), "--text-encoder", str(text_encoder_dir), "--codec", "pixel"]
    return args + ["--resolution", "32", "--max-length", str(MAX_LENGTH), "--device", "cpu", "--workers", "1"]


def _error(capsys, argv) -> str:
    with pytest.raises(SystemExit) as exit_info:
        parse_args(argv)
    assert exit_info.value.code == 2
    return capsys.readouterr().err


def test_control_modes_and_their_options(base_args, capsys, tmp_path):
    assert parse_args(base_args + ["--control"]).control == "image"  # a bare --control: control_path as it is
    assert parse_args(base_args).control is None
    canny = parse_args(base_args + ["--control", "canny", "--canny-high", "150"])
    assert (canny.canny_low, canny.canny_high, canny.canny_l2_gradient) == (100, 150, False)
    assert "--canny-low applies to --control canny only" in _error(capsys, base_args + ["--canny-low", "5"])
    assert "--hed applies to --control hed only" in _error(capsys, base_args + ["--control", "--hed", "x.pth"])
    assert "0 <= --canny-low <= --canny-high" in _error(
        capsys, base_args + ["--control", "canny", "--canny-low", "300"]
    )
    missing = tmp_path / "no" / "ControlNetHED.pth"
    assert f"no HED weights file at {missing}" in _error(
        capsys, base_args + ["--control", "hed", "--hed", str(missing)]
    )


def test_hed_end_to_end(base_args, tmp_path, capsys):
    hed_path = tmp_path / "ControlNetHED.pth"
    write_random_hed(hed_path)
    assert main(base_args + ["--control", "hed", "--hed", str(hed_path)]) == 0
    assert f"wrote {N} caption, {N} latent, {N} control files" in capsys.readouterr().out
    root = tmp_path / "data"
    entry = json.loads((root / "data_info.json").read_text())[0]
    image = load_image(root / entry["path"], (32, 32))[None]
    expected = to_control_image(HEDAnnotator(hed_path)((image + 1) / 2)).float() / 127.5 - 1
    latent = np.load(latent_dir(root, 32, control=True) / f"{feature_name(entry['path'])}.npy")
    np.testing.assert_allclose(PixelCodec().decode(torch.from_numpy(latent[:12])[None]), expected, atol=1e-6)
    assert json.loads((latent_dir(root, 32, control=True) / "meta.json").read_text())["hed"] == str(hed_path)


def test_canny_thresholds_are_recorded_and_a_change_needs_redo(base_args, tmp_path, capsys):
    canny = base_args + ["--control", "canny", "--canny-low", "30", "--canny-high", "60", "--canny-l2-gradient"]
    assert main(canny) == 0
    meta = json.loads((latent_dir(tmp_path / "data", 32, control=True) / "meta.json").read_text())
    assert (meta["annotator"], meta["canny_low"], meta["canny_high"], meta["canny_l2_gradient"]) == (
        "canny",
        30,
        60,
        1,
    )
    with pytest.raises(ValueError, match="canny_l2_gradient: cache has True, this run has False"):
        main(canny[:-1])
    assert main(canny[:-1] + ["--redo"]) == 0  # only the stale control cache is redone
    assert f"wrote 0 caption, 0 latent, {N} control files" in capsys.readouterr().out.splitlines()[-1]
    assert main(canny[:-1] + ["--redo", "all"]) == 0
    assert f"wrote {N} caption, {N} latent, {N} control files" in capsys.readouterr().out.splitlines()[-1]
