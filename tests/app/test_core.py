"""The app's requests without the page: each refused input has its own message, accepted ones give the pipeline's
images, and loading names whatever file is missing."""

import math

import pytest
import torch

from diffusion.app.core import InputError, Models, load_models, size_choices, teacher_vs_lcm, text_to_image
from tests.app.fixtures import PROMPT, make_tiny_app, reference, reference_pipelines
from tests.commands import load_command


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    app = make_tiny_app(tmp_path_factory.mktemp("app_core"))
    models = load_models(str(app["config"]), {"teacher": str(app["teacher"]), "lcm": str(app["lcm"])})
    return dict(app, models=models, pipes=reference_pipelines(app))


def test_sizes_are_the_buckets_the_patch_grid_divides(tiny):
    sizes = tiny["models"].sizes
    assert next(iter(sizes)) == "32×32 (h/w 1.0)" and tiny["models"].multiscale
    assert all(h % 4 == 0 and w % 4 == 0 for h, w in sizes.values())  # pixel codec 2 x patch 2
    assert sizes["24×40 (h/w 0.6)"] == (24, 40) and len(sizes) == 9  # binning_table(32, 4): 33 buckets, 9 tile


def test_single_scale_model_has_one_size(tiny):
    from diffusion.build import load_pipeline
    from tests.model.helpers import tiny as tiny_model

    model = tiny_model(ms=False, caption_channels=64, model_max_length=13, in_channels=12, input_size=16)
    pipe = load_pipeline(tiny["cfg"], model=model)
    assert size_choices(pipe, 32) == {"32×32": (32, 32)}


def test_accepted_request_is_the_pipelines_image(tiny):
    result = text_to_image(tiny["models"], f"  {PROMPT} ", "dpm", 2.0, 3.5, 11, 2, "16×64 (h/w 0.25)")
    expected = reference(tiny["pipes"], [PROMPT] * 2, seed=11, name="dpm", steps=2, cfg_scale=3.5, height=16, width=64)
    assert all(torch.equal(torch.from_numpy(a), b) for a, b in zip(result.images, expected, strict=True))
    assert result.nfe == 4 and result.seconds > 0
    assert "teacher, DPM-Solver++, 2 steps, CFG 3.5: 4 model evaluations per image; 2 images in" in result.summary()
    slow, fast = teacher_vs_lcm(tiny["models"], PROMPT, 1, 3, 4.5)
    assert torch.equal(torch.from_numpy(fast.images[0]), reference(tiny["pipes"], [PROMPT], 1, name="lcm")[0])
    assert (slow.nfe, fast.nfe) == (6, 4)


@pytest.mark.parametrize(
    "args, message",
    [
        (("", "lcm", 4, 4.5, 0, 1), "Enter a prompt."),
        (("   ", "lcm", 4, 4.5, 0, 1), "Enter a prompt."),
        ((PROMPT, "lcm", 9, 4.5, 0, 1), "Steps for the LCM student must be a whole number from 1 to 8, got 9."),
        ((PROMPT, "dpm", 101, 4.5, 0, 1), "from 1 to 100, got 101"),
        ((PROMPT, "dpm", 2.5, 4.5, 0, 1), "must be a whole number from 1 to 100, got 2.5"),
        ((PROMPT, "dpm", None, 4.5, 0, 1), "must be a whole number, got None"),
        ((PROMPT, "dpm", 4, math.nan, 0, 1), "Guidance scale must be from 1.0 to 20.0, got nan."),
        ((PROMPT, "dpm", 4, 0.5, 0, 1), "Guidance scale must be from 1.0 to 20.0, got 0.5."),
        ((PROMPT, "ddpm", 4, 4.5, 0, 1), "Unknown sampler 'ddpm'"),
        ((PROMPT, "lcm", 4, 4.5, -1, 1), "Seed must be a whole number from 0 to 4294967295, got -1."),
        ((PROMPT, "lcm", 4, 4.5, 0, 5), "Batch size must be a whole number from 1 to 4, got 5."),
    ],
)
def test_refused_requests_say_why(tiny, args, message):
    with pytest.raises(InputError) as err:
        text_to_image(tiny["models"], *args)
    assert message in str(err.value)


def test_unknown_size_and_missing_network(tiny):
    with pytest.raises(InputError, match="Unknown size '33×33'"):
        text_to_image(tiny["models"], PROMPT, "lcm", 4, None, 0, 1, "33×33")
    only_lcm = Models(teacher=None, lcm=tiny["models"].lcm, sizes=tiny["models"].sizes)
    with pytest.raises(InputError, match="--checkpoint teacher=PATH"):
        text_to_image(only_lcm, PROMPT, "dpm", 4, 4.5, 0, 1)
    with pytest.raises(InputError, match="--checkpoint teacher=PATH"):
        teacher_vs_lcm(only_lcm, PROMPT, 0, 4, 4.5)


def test_checkpoint_flags_and_missing_files(tiny, tmp_path):
    parse_checkpoints = load_command("tools/app.py").parse_checkpoints
    assert parse_checkpoints(["teacher=a.pth", "lcm=b"]) == {"teacher": "a.pth", "lcm": "b"}
    for bad in (["a.pth"], ["student=a"], ["lcm="], ["lcm=a", "lcm=b"]):
        with pytest.raises(SystemExit):
            parse_checkpoints(bad)
    missing = tmp_path / "nope.safetensors"
    with pytest.raises(SystemExit, match=f"--checkpoint lcm not found: {missing}"):
        load_models(str(tiny["config"]), {"lcm": str(missing)})
    with pytest.raises(SystemExit, match="--vae not found"):
        load_models(str(tiny["config"]), {"lcm": str(tiny["lcm"])}, vae=str(tmp_path / "vae"))
    with pytest.raises(SystemExit, match="text encoder .* not found"):
        load_models(str(tiny["config"]), {"lcm": str(tiny["lcm"])}, text_encoder=str(tmp_path / "t5"))
    # no teacher given and no weights in the config: the student is served alone
    models = load_models(str(tiny["config"]), {"lcm": str(tiny["lcm"])})
    assert models.teacher is None and models.lcm is not None


def test_controlnet_flags_need_their_config(tiny, monkeypatch):
    from diffusion.app import ui

    app = load_command("tools/app.py")
    monkeypatch.setattr(ui, "serve", lambda *a, **k: pytest.fail("must not serve"))
    argv = ["--config", str(tiny["config"]), "--checkpoint", f"lcm={tiny['lcm']}", "--controlnet", str(tiny["lcm"])]
    with pytest.raises(SystemExit, match="--controlnet needs --controlnet-config"):
        app.main([*argv, "--device", "cpu"])
    with pytest.raises(SystemExit, match="--concurrency must be >= 1"):
        app.main([*argv, "--concurrency", "0"])


def test_the_embedded_default_serves_teacher_and_student_from_any_folder(tmp_path, monkeypatch):
    """``python /repo/tools/app.py`` started elsewhere: the config's weights.teacher (``assets/tiny_teacher/…``) is
    found in the checkout, so the teacher is served too (it was "... is missing; serving the LCM student only")."""
    monkeypatch.chdir(tmp_path)
    models = load_models(None, {})
    assert models.teacher is not None and models.lcm is not None
