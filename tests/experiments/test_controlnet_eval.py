"""The ControlNet evaluation's LCM student rows (``tools/reproduce_controlnet.py --lcm-student``): the student's config
is found beside its weights, and both rows sample under the student's process, not the ControlNet run's."""

from pathlib import Path

import pytest
import torch
from mmengine.config import Config
from safetensors.torch import load_file, save_file

from diffusion.build import load_pipeline, with_weights, without_controlnet
from diffusion.data import ensure_tiny_text_encoder
from diffusion.experiments.assets import CONTROLNET_CONFIG, CONTROLNET_DIR, LCM_CONFIG, LCM_DIR, TEACHER_DIR
from diffusion.experiments.controlnet_eval import LCM, student_config, student_rows
from diffusion.schedulers import DiffusionProcess


def test_the_students_config_is_found_beside_its_weights(tmp_path):
    published = student_config(LCM_DIR / "model.safetensors")  # meta.json names configs/lcm/tiny_lcm_student.py
    assert Path(published.filename).resolve() == LCM_CONFIG
    run = tmp_path / "run"
    step = run / "checkpoints" / "step_0000100"
    step.mkdir(parents=True)
    (run / "config.py").write_text("method = dict(type='LCMDistillation', num_ddim_steps=25)\n")
    for given in (step, step / "model.safetensors"):
        assert student_config(given).method.num_ddim_steps == 25
    given = tmp_path / "mine.py"
    given.write_text("method = dict(num_ddim_steps=10)\n")
    assert student_config(step, given).method.num_ddim_steps == 10
    with pytest.raises(SystemExit, match="--lcm-student-config"):
        student_config(tmp_path / "loose.safetensors")


def test_the_student_rows_sample_under_the_students_process(tmp_path):
    cfg = Config.fromfile(str(CONTROLNET_CONFIG))
    cfg.text_encoder.path = str(ensure_tiny_text_encoder(tmp_path / "t5"))
    teacher = load_pipeline(with_weights(without_controlnet(cfg), base=str(TEACHER_DIR / "model.safetensors")))
    student_cfg = Config.fromfile(str(LCM_CONFIG))
    student_cfg.merge_from_dict({"method.num_ddim_steps": 25, "method.timestep_scaling": 4.0})
    student = tmp_path / "student.safetensors"  # the published student, in fp32
    save_file({k: v.float() for k, v in load_file(str(LCM_DIR / "model.safetensors")).items()}, str(student))
    rows = student_rows(cfg, CONTROLNET_DIR / "model.safetensors", "N=3", student, student_cfg, teacher)
    assert [(r[0], r[2], r[3]) for r in rows] == [
        ("LCM student 4 steps, no control", False, LCM),
        ("LCM student 4 steps + N=3 (route a)", True, LCM),
    ]
    for _, pipe, *_ in rows:
        assert pipe.process == DiffusionProcess.from_config(student_cfg) != DiffusionProcess.from_config(cfg)
    weights = load_file(str(student))["x_embedder.proj.weight"]  # both rows stand on the student's weights
    assert torch.equal(rows[0][1].model.x_embedder.proj.weight, weights)
    assert torch.equal(rows[1][1].model.base_model.x_embedder.proj.weight, weights)
