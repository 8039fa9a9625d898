"""Every student kind in the app (issue 22.5): the text-to-image tab (both samplers), the teacher-vs-LCM tab and the
ControlNet tab (on the teacher and on the student) with a full LCM student, an LCM-LoRA student (adapters only) and a
w-embedding student, each image equal to the same network built by hand (tests/kinds.py). Before: the LCM tabs passed
no guidance to a w-embedding student (refused), its teacher was built with the student's w-embedding (refused DPM),
and the ControlNet tab loaded a LoRA student's adapters-only file as a base (a misleading y_embedding KeyError)."""

import numpy as np
import pytest
import torch
from mmengine.config import Config
from safetensors.torch import load_file

from diffusion.app.control import controlled, load_controlnets
from diffusion.app.core import load_models, teacher_vs_lcm, text_to_image
from diffusion.build import load_pipeline
from diffusion.model.controlnet import PixArtControlNet
from tests.kinds import PROMPT, STUDENTS, W, make_kinds, reference_network, teacher_network

LCM_GUIDANCE = dict(full=None, lora=None, wembed=W + 1)


@pytest.fixture(scope="module")
def made(tmp_path_factory):
    return make_kinds(tmp_path_factory.mktemp("app_kinds"))


@pytest.fixture(scope="module")
def references(made):
    """Per student kind: the teacher and the student pipelines built by hand, sharing one text encoder and codec."""
    cfg = Config.fromfile(made["teacher_config"])
    teacher = load_pipeline(cfg, model=teacher_network(made))
    pipes = {"teacher": teacher}
    for kind in STUDENTS:
        student_cfg = Config.fromfile(made["kinds"][kind]["config"])
        pipes[kind] = load_pipeline(student_cfg, model=reference_network(made, kind), like=teacher)
    return pipes


def _image(pipe, steps: int, **sampler) -> np.ndarray:
    return pipe([PROMPT], seed=0, steps=steps, **sampler)[0].permute(1, 2, 0).numpy()


@pytest.mark.parametrize("kind", STUDENTS)
def test_text_to_image_and_teacher_vs_lcm_serve_every_student_kind(made, references, kind):
    models = load_models(made["kinds"][kind]["config"], {"lcm": made["kinds"][kind]["checkpoint"]})
    assert models.lcm_cfg_scale == LCM_GUIDANCE[kind]
    lcm = text_to_image(models, PROMPT, "lcm", 2, None, 0, 1)
    want = _image(references[kind], 2, name="lcm", cfg_scale=LCM_GUIDANCE[kind])
    assert np.array_equal(lcm.images[0], want)
    assert ("w 3 embedded" in lcm.label) == (kind == "wembed")
    dpm = text_to_image(models, PROMPT, "dpm", 2, 4.5, 0, 1)  # the teacher of weights.teacher, as the teacher network
    assert np.array_equal(dpm.images[0], _image(references["teacher"], 2, name="dpm", cfg_scale=4.5))
    slow, fast = teacher_vs_lcm(models, PROMPT, 0, 2, 4.5)
    assert np.array_equal(slow.images[0], dpm.images[0])
    assert np.array_equal(fast.images[0], _image(references[kind], 4, name="lcm", cfg_scale=LCM_GUIDANCE[kind]))


@pytest.mark.parametrize("kind", STUDENTS)
def test_the_controlnet_tab_sits_on_every_student_kind(made, references, kind):
    """The ControlNet's copies on the very network the app serves: the LoRA student merged into its teacher, the
    w-embedding student sampled at its config's w."""
    models = load_models(made["kinds"][kind]["config"], {"lcm": made["kinds"][kind]["checkpoint"]})
    cn = made["kinds"]["controlnet"]
    control = load_controlnets(models, cn["config"], cn["checkpoint"])
    edges = np.zeros((32, 32, 3), np.uint8)
    edges[8:24, 14:18] = 255
    copies = {k[len("controlnet.") :]: v for k, v in load_file(cn["checkpoint"]).items()}
    for sampler, base, guidance in (("lcm", kind, LCM_GUIDANCE[kind]), ("dpm", "teacher", 4.5)):
        cmap, got = controlled(models, control, PROMPT, edges, "image", sampler, 2, 4.5, 0)
        network = PixArtControlNet(references[base].model, copy_blocks=1)
        network.controlnet.load_state_dict(copies)
        pipe = references[base].with_model(network.eval())
        cond = torch.from_numpy(cmap).permute(2, 0, 1)[None]
        want = pipe([PROMPT], seed=0, name=sampler, steps=2, cfg_scale=guidance, control=cond)[0]
        assert np.array_equal(got.images[0], want.permute(1, 2, 0).numpy()), sampler
