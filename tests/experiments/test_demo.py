"""``make demo`` (diffusion/experiments/demo.py): the enlarged grids, the closing summary, the ControlNet on the
student under the student's process, the run dir tied to teacher and config, and (slow) a short demo end to end,
twice: the same student bit for bit, no warning."""

import hashlib
import json
import re

import numpy as np
import pytest
import torch
from mmengine.config import Config
from PIL import Image

from diffusion.build import load_pipeline
from diffusion.data import ensure_tiny_text_encoder
from diffusion.experiments import demo
from diffusion.schedulers import DiffusionProcess


def test_enlarged_is_nearest_neighbour_x4(tmp_path):
    pixels = np.random.default_rng(0).integers(0, 256, (6, 10, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(tmp_path / "grid.png")
    big = demo.enlarged(tmp_path / "grid.png")
    assert big == tmp_path / "grid_x4.png"
    assert np.array_equal(np.asarray(Image.open(big)), pixels.repeat(4, axis=0).repeat(4, axis=1))


def test_the_controlnet_on_the_student_samples_under_the_students_process(tmp_path):
    cfg = Config.fromfile(str(demo.LCM_CONFIG))
    cfg.text_encoder.path = str(ensure_tiny_text_encoder(tmp_path / "t5"))
    teacher_pipe = load_pipeline(cfg, demo.TEACHER)
    student_cfg = Config({**cfg.to_dict(), "method": {**cfg.method, "num_ddim_steps": 25, "timestep_scaling": 4.0}})
    teacher, lcm = demo.controlnet_pipelines(teacher_pipe, demo.TEACHER, student_cfg)
    assert lcm.process == DiffusionProcess.from_config(student_cfg) != teacher.process
    assert teacher.process == DiffusionProcess.from_config(Config.fromfile(str(demo.CONTROLNET_CONFIG)))


def test_the_run_dir_is_tied_to_teacher_and_config():
    cfg = Config.fromfile(str(demo.LCM_CONFIG))
    same = Config.fromfile(str(demo.LCM_CONFIG))
    assert demo.run_digest(cfg) == demo.run_digest(same)
    same.merge_from_dict({"train.max_steps": 30})
    assert demo.run_digest(cfg) != demo.run_digest(same)


def test_the_summary_says_what_was_trained_the_table_and_where_the_pictures_are(tmp_path):
    trained = dict(
        teacher="assets/tiny_teacher/model.safetensors",
        config="configs/lcm/tiny_lcm.py",
        steps=300,
        batch_size=32,
        precision="bf16",
        seed=43,
        threads=2,
        final_loss=0.1234,
        seconds=420.0,
        student="output/demo/lcm/checkpoints/step_0000300/model.safetensors",
    )
    table = "| setting | FID ↓ |\n|---|---|\n| PixArt-delta LCM, 4 steps | 31.53 |\n"
    pictures = [(tmp_path / "a.png", tmp_path / "a_x4.png", "columns: x | y")]
    text = demo.summary(trained, table, pictures, tmp_path, 7.5)
    assert "300 steps of batch 32" in text and "2 CPU threads" in text and "7.0 min" in text and "0.1234" in text
    assert table.strip() in text and "a_x4.png" in text and "columns: x | y" in text and "summary.md" in text
    assert "trained by an earlier run" in demo.summary(dict(trained, seconds=None), table, pictures, tmp_path, 1.0)


def _sha256(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.mark.slow
def test_a_short_demo_twice_gives_the_same_student_and_no_warning(tmp_path, monkeypatch, capfd):
    """Two short demos (2 distillation steps, 16 images a row) in one folder: every picture and its x4 copy, the
    summary; the two students are equal bit for bit and so are the tables' FID, SWD and attribute columns; no
    warning."""
    monkeypatch.chdir(tmp_path)  # the embedded data is made under this folder's output/
    monkeypatch.setenv("WANDB_MODE", "disabled")
    texts = [demo.run(tmp_path / f"demo{i}", steps=2, eval_images=16) for i in range(2)]
    out = capfd.readouterr()
    assert "WARNING" not in out.out + out.err
    for name in ("teacher_vs_lcm", "controlnet", "reproduce_lcm/grid"):
        small, big = Image.open(tmp_path / f"demo0/{name}.png"), Image.open(tmp_path / f"demo0/{name}_x4.png")
        assert big.size == (small.width * 4, small.height * 4)
    assert (tmp_path / "demo0/summary.md").read_text() == texts[0] and "2 steps of batch 32" in texts[0]
    student = "lcm/checkpoints/step_0000002/model.safetensors"
    assert _sha256(tmp_path / "demo0" / student) == _sha256(tmp_path / "demo1" / student)
    rows = [json.loads((tmp_path / f"demo{i}/reproduce_lcm/results.json").read_text()) for i in range(2)]
    keys = ("fid", "swd", "attr_all", "attr_mean")
    for a, b in zip(*rows, strict=True):
        assert [a[k] for k in keys] == [b[k] for k in keys]
    assert "SWD ×1e3 ↓" in texts[0]  # the summary carries the table's SWD column
    assert torch.get_num_threads() == int(re.search(r"(\d+) CPU thread", texts[0]).group(1))
