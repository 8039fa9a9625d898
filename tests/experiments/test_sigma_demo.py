"""``make sigma-demo`` at a tiny size (the embedded default's 6 blocks at 32 wide, 48 images, 2 steps each): the
alpha -> Sigma teacher fine-tune with and without KV compression (the missing ``attn.sr``/``attn.norm`` weights start
from their mean-pool init, said in train.log), the LCM distillation of each, both tables side by side (FID and SWD),
the grids, and
the distilled Sigma student sampled by ``tools/sample.py`` (the tiny Sigma teacher -> LCM -> sample path)."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from mmengine.config import Config
from PIL import Image
from safetensors import safe_open
from safetensors.torch import save_file

from diffusion.build import load_pipeline
from diffusion.data import EMBEDDED_MAX_LENGTH, ensure_embedded_default
from diffusion.experiments import assets, sigma_demo
from diffusion.experiments.lcm_quality import ROWS
from diffusion.registry import MODELS
from tests.commands import load_command
from tests.eval.helpers import tiny_attribute_net
from tests.model.helpers import randomize

ALPHA = dict(type="PixArt_tiny", input_size=16, patch_size=2, in_channels=12, hidden_size=32, depth=6, num_heads=2,
             caption_channels=64, model_max_length=EMBEDDED_MAX_LENGTH, pe_interpolation=1.0)  # fmt: skip
KV_KEYS = [f"blocks.{i}.attn.{k}" for i in (3, 4, 5) for k in ("norm.bias", "norm.weight", "sr.bias", "sr.weight")]


def test_configs_are_the_tiny_teacher_plus_kv_compression_in_the_last_half():
    alpha = Config.fromfile(str(assets.TEACHER_CONFIG))
    teacher, lcm = Config.fromfile(str(sigma_demo.TEACHER_CONFIG)), Config.fromfile(str(sigma_demo.LCM_CONFIG))
    kv = dict(sampling="conv", scale_factor=2, kv_compress_layer=[3, 4, 5])
    assert teacher.model == dict(alpha.model, kv_compress_config=kv)
    assert teacher.model.type == "PixArt_tiny"  # a plain PixArt: no micro-conditions, as the alpha teacher
    assert teacher.weights == dict(base="assets/tiny_teacher/model.safetensors")
    assert teacher.method == alpha.method and teacher.train.seed == alpha.train.seed
    assert lcm.model.kv_compress_config == kv
    assert lcm.weights.teacher == "output/sigma_demo/kv/teacher/model.safetensors"
    none_teacher, none_lcm = sigma_demo.variant_configs("none", Path("o"), alpha_teacher="a.safetensors")
    assert none_teacher.model.kv_compress_config is None and none_lcm.model.kv_compress_config is None
    assert none_lcm.weights.teacher == "o/none/teacher/model.safetensors"
    assert none_teacher.weights.base == "a.safetensors"
    with pytest.raises(ValueError, match="unknown variant 'sigma'"):
        sigma_demo.variant_configs("sigma", Path("o"))


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    """One tiny sigma-demo run (both variants) on 48 embedded images with a random 32-wide alpha teacher."""
    root = tmp_path_factory.mktemp("sigma_demo")
    data = ensure_embedded_default(root / "data", num=48, text_encoder_path=root / "t5")
    alpha = randomize(MODELS.build(dict(ALPHA)), std=0.05, seed=1)
    save_file({k: v.contiguous() for k, v in alpha.state_dict().items()}, str(root / "alpha.safetensors"))
    options = {"data.root": str(data), "text_encoder.path": str(root / "t5"), "model.hidden_size": 32}
    options.update({"model.num_heads": 2, "train.mixed_precision": "no", "train.batch_size": 4})
    patch = pytest.MonkeyPatch()  # the data exists (48 images): the demo must not ask for the default 4800
    patch.setattr(sigma_demo, "ensure_embedded_default", lambda **kw: None)
    patch.setattr(assets, "ensure_embedded_default", lambda **kw: None)
    out = root / "out"
    result = sigma_demo.run(
        out,
        eval_images=8,
        speed_images=4,
        speed_repeats=1,
        cfg_options=options,
        teacher_steps=2,
        lcm_steps=2,
        alpha_teacher=root / "alpha.safetensors",
        weights=tiny_attribute_net(tmp_path_factory),
    )
    patch.undo()
    return dict(root=root, out=out, result=result, options=options, alpha=root / "alpha.safetensors")


def test_fine_tunes_publish_sigma_teachers_and_say_why_kv_weights_are_new(demo):
    out = demo["out"]
    for variant, kv in (("kv", True), ("none", False)):
        meta = json.loads((out / variant / "teacher" / "meta.json").read_text())
        assert meta["variant"] == variant and meta["steps"] == 2
        assert meta["fine_tuned_from_sha256"] == assets.file_hash(demo["root"] / "alpha.safetensors")
        with safe_open(str(out / variant / "teacher" / "model.safetensors"), "pt") as f:
            keys = set(f.keys())
            assert all(f.get_tensor(k).dtype == torch.float16 for k in keys)
        assert set(KV_KEYS) <= keys if kv else not any(".attn.sr." in k for k in keys)
        if kv:  # the compression trains: off its mean-pool init (1/4 everywhere) after the first step (fp32 run)
            with safe_open(
                str(out / variant / "teacher_run" / "checkpoints" / "step_0000002" / "model.safetensors"), "pt"
            ) as f:
                sr = f.get_tensor("blocks.3.attn.sr.weight")
            assert sr.shape == (32, 1, 2, 2) and not torch.equal(sr, torch.full_like(sr, 0.25))
        log = (out / variant / "teacher_run" / "train.log").read_text()
        assert ("no KV-compression weights for " + str(sorted(KV_KEYS)) in log) is kv
        assert ("as expected when an uncompressed checkpoint is fine-tuned" in log) is kv
        lcm_log = (out / variant / "lcm" / "train.log").read_text()
        assert "KV-compression" not in lcm_log  # the student starts from the Sigma teacher's own sr/norm


def test_table_has_both_variants_for_every_row_and_the_grids(demo):
    out, result = demo["out"], demo["result"]
    assert list(result["results"]) == ["none", "kv"]
    table = (out / "table.md").read_text()
    assert table == result["table"]
    for label, _, _ in ROWS:
        assert f"| {label} | no |" in table and f"| {label} | blocks 3-5, 2x2 |" in table
    assert "| FID ↓ | SWD ×1e3 ↓ |" in table and "Real against real (8 other" in table
    for variant, label in (("none", "no"), ("kv", "blocks 3-5, 2x2")):
        for r in result["results"][variant]:  # SWD per level in the results, its mean in the table
            assert set(r["swd"]) == {"32", "16", "8", "avg"} and r["swd"]["avg"] > 0
            assert f"| {r['setting']} | {label} | {r['fid']:.2f} | {r['swd']['avg']:.2f} |" in table
    for variant in ("none", "kv"):
        assert (out / variant / "reproduce_lcm" / "table.md").is_file()
        assert Image.open(out / variant / "teacher_vs_lcm.png").size == (5 * 32, 8 * 32)
    assert Image.open(out / "kv_vs_none.png").size == (4 * 32, 8 * 32)  # 2 variants x (teacher, LCM), 8 prompts
    speed = json.loads((out / "speed.json").read_text())
    assert set(speed) == {"none", "kv"} and all(v > 0 for by in speed.values() for v in by.values())
    assert "| LCM 4 steps |" in table and "| 2 x 4 |" in table  # the speed rows and the fine-tunes' steps x batch


def test_sigma_student_samples_through_tools_sample(demo, tmp_path):
    """The distilled Sigma student (KV-compressed) through tools/sample.py: PNGs equal to the Pipeline's."""
    out = demo["out"]
    config = tmp_path / "cfg.py"
    Config.fromfile(str(sigma_demo.LCM_CONFIG)).dump(str(config))
    cfg = Config.fromfile(str(config))
    cfg.merge_from_dict(demo["options"])
    cfg.dump(str(config))
    student = sorted((out / "kv" / "lcm" / "checkpoints").glob("step_*"))[-1]
    prompts = ["a large red circle at the top left on a gray background", "a small blue square in the center"]
    argv = ["--config", str(config), "--checkpoint", str(student / "model.safetensors"), "--prompts", *prompts]
    argv += ["--sampler", "lcm", "--steps", "2", "--out", str(tmp_path / "samples")]
    load_command("tools/sample.py").main(argv)
    expected = load_pipeline(cfg, student / "model.safetensors")(prompts, seed=0, name="lcm", steps=2)
    image = torch.from_numpy(np.array(Image.open(tmp_path / "samples" / "s0_001.png"))).permute(2, 0, 1)
    assert torch.equal(image, expected[1])
    assert load_pipeline(cfg, student / "model.safetensors").model.blocks[3].attn.sr_ratio == 2


def test_a_published_teacher_of_the_same_inputs_is_reused(demo, monkeypatch):
    calls = []
    monkeypatch.setattr(sigma_demo, "train_and_publish", lambda *a, **k: calls.append(a) or Path("trained"))
    cfg, _ = sigma_demo.variant_configs("kv", demo["out"], demo["options"], demo["alpha"])
    cfg.merge_from_dict({"train.max_steps": 2})  # as the run had it
    out = demo["out"] / "kv"
    assert sigma_demo.fine_tune_teacher(cfg, out / "teacher_run", out / "teacher", "kv") == out / "teacher" / (
        "model.safetensors"
    )
    assert calls == []
    cfg.merge_from_dict({"train.max_steps": 3})  # other inputs: trained (and published) again
    assert sigma_demo.fine_tune_teacher(cfg, out / "teacher_run", out / "teacher", "kv") == Path("trained")
    assert len(calls) == 1
