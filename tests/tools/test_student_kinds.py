"""Every student kind in every sampling command (issue 22.5): ``tools/sample.py`` and ``tools/eval_fid.py sample`` on a
full LCM student, an LCM-LoRA student (adapters only, merged into the config's teacher), a w-embedding student (at
its config's w) and a ControlNet, each image equal to the same network built by hand (tests/kinds.py) and sampled
with the sampler its config's method names."""

import json

import numpy as np
import pytest
import torch
from mmengine.config import Config
from PIL import Image

from diffusion.build import load_pipeline
from diffusion.methods import method_sampler
from tests.commands import load_command
from tests.kinds import KINDS, PROMPT, STUDENTS, W, make_kinds, reference_network, teacher_network

sample_main = load_command("tools/sample.py").main
eval_main = load_command("tools/eval_fid.py").main
EXPECTED_SAMPLER = dict(
    full=dict(name="lcm", steps=2, cfg_scale=None),
    lora=dict(name="lcm", steps=2, cfg_scale=None),
    wembed=dict(name="lcm", steps=2, cfg_scale=W + 1),  # the config's method.w, diffusers' convention
    controlnet=dict(name="dpm", steps=2, cfg_scale=4.5),
)


@pytest.fixture(scope="module")
def made(tmp_path_factory):
    made = make_kinds(tmp_path_factory.mktemp("kinds"))
    edges = np.zeros((32, 32, 3), np.uint8)
    edges[8:24, 14:18] = 255
    Image.fromarray(edges).save(made["root"] / "edges.png")
    (made["root"] / "control").mkdir()
    for i in range(2):
        Image.fromarray(edges).save(made["root"] / "control" / f"{i:05d}.png")
    (made["root"] / "prompts.txt").write_text(f"{PROMPT}\na small blue square in the center\n")
    return made


def _png(path) -> torch.Tensor:
    return torch.from_numpy(np.asarray(Image.open(path))).permute(2, 0, 1)


def _reference(made: dict, kind: str, **extra) -> torch.Tensor:
    cfg = Config.fromfile(made["kinds"][kind]["config"])
    pipe = load_pipeline(cfg, model=reference_network(made, kind))
    return pipe([PROMPT], seed=0, **EXPECTED_SAMPLER[kind], **extra)[0]


@pytest.mark.parametrize("kind", KINDS)
def test_sample_py_samples_every_kind_with_its_methods_sampler(made, kind, tmp_path, capsys):
    entry = made["kinds"][kind]
    argv = ["--config", entry["config"], "--checkpoint", entry["checkpoint"], "--prompts", PROMPT, "--steps", "2"]
    extra = {}
    if kind == "controlnet":
        argv += ["--control", str(made["root"] / "edges.png")]
        extra["control"] = _png(made["root"] / "edges.png")[None]
    sample_main([*argv, "--out", str(tmp_path)])
    assert f"sampler {EXPECTED_SAMPLER[kind]['name']}, 2 steps" in capsys.readouterr().out
    assert torch.equal(_png(tmp_path / "s0_000.png"), _reference(made, kind, **extra))


@pytest.mark.parametrize("kind", STUDENTS)
def test_sample_py_on_a_student_config_without_checkpoint_samples_its_teacher_with_a_teachers_sampler(
    made, kind, tmp_path, capsys
):
    """An LCM config (a w-embedding one included, whose own model would refuse DPM) and --sampler dpm, no checkpoint:
    the teacher of weights.teacher as the teacher network; the LCM sampler without a checkpoint stays refused."""
    config = made["kinds"][kind]["config"]
    argv = ["--config", config, "--prompts", PROMPT, "--steps", "2"]
    sample_main([*argv, "--sampler", "dpm", "--out", str(tmp_path)])
    assert "sampling the teacher" in capsys.readouterr().out
    cfg = Config.fromfile(made["teacher_config"])
    expected = load_pipeline(cfg, model=teacher_network(made))([PROMPT], seed=0, name="dpm", steps=2, cfg_scale=4.5)
    assert torch.equal(_png(tmp_path / "s0_000.png"), expected[0])
    with pytest.raises(SystemExit, match="distils a student.*weights.teacher.*--checkpoint"):
        sample_main([*argv, "--out", str(tmp_path / "lcm")])


@pytest.mark.parametrize("kind", KINDS)
def test_eval_fid_sample_samples_every_kind_with_its_methods_sampler(made, kind, tmp_path):
    entry = made["kinds"][kind]
    argv = ["sample", "--config", entry["config"], "--checkpoint", entry["checkpoint"], "--steps", "2"]
    argv += ["--prompts", str(made["root"] / "prompts.txt"), "--out", str(tmp_path / "out"), "--batch-size", "2"]
    if kind == "controlnet":
        argv += ["--control", str(made["root"] / "control")]
    assert eval_main(argv) == 0
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert manifest["sampler"] == EXPECTED_SAMPLER[kind]
    assert sorted(p.name for p in (tmp_path / "out").glob("*.png")) == ["00000.png", "00001.png"]
    cfg = Config.fromfile(entry["config"])
    assert method_sampler(cfg).get("name", "dpm") == EXPECTED_SAMPLER[kind]["name"]
