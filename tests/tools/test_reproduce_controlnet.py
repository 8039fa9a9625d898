"""tools/reproduce_controlnet.py --train: the ablation rows are trained through the one trainer
(diffusion.engine.launch.train, as train_scripts/train.py) and land in the table, a second invocation finds them
finished and does not retrain, a dir of another config is refused naming the key, and reproduce_tables' controlnet
job needs no --run."""

import argparse
import math

import pytest
from mmengine.config import Config
from safetensors.torch import save_file

from diffusion.data import EMBEDDED_MAX_LENGTH, ensure_embedded_default
from diffusion.engine import launch
from diffusion.eval import build_feature_extractor
from diffusion.experiments import controlnet_ablation as ablation
from diffusion.experiments.tables import default_jobs
from diffusion.paths import repo_path
from diffusion.registry import MODELS
from tests.commands import load_command
from tests.eval.helpers import tiny_attribute_net

rc = load_command("tools/reproduce_controlnet.py")

# the tiny teacher's 6 blocks (so every row's N fits) at 32 wide, random weights: seconds, not minutes, per row
BASE = dict(type="PixArt_tiny", input_size=16, patch_size=2, in_channels=12, hidden_size=32, depth=6, num_heads=2,
            caption_channels=64, model_max_length=EMBEDDED_MAX_LENGTH, pe_interpolation=1.0)  # fmt: skip


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("cn_ablation")
    data = ensure_embedded_default(root / "data", num=48, text_encoder_path=root / "t5")
    save_file(MODELS.build(dict(BASE)).state_dict(), str(root / "base.safetensors"))
    options = [f"weights.base={root / 'base.safetensors'}", f"data.root={data}", f"text_encoder.path={root / 't5'}"]
    options += ["model.hidden_size=32", "model.num_heads=2", "train.mixed_precision=no"]
    return root, options, tiny_attribute_net(tmp_path_factory)


@pytest.fixture
def spy(monkeypatch, tiny):
    """Counts the trainer runs and gives the tool the tiny attribute net."""
    calls = []
    train = launch.train
    monkeypatch.setattr(launch, "train", lambda argv: (calls.append(argv), train(argv))[1])
    net = tiny[2]
    monkeypatch.setattr(rc, "build_feature_extractor", lambda name: build_feature_extractor(name, net))
    return calls


def tables_job_args(steps: int, images: int) -> list[str]:
    ns = argparse.Namespace(student=None, num_images=8, sweep=False, controlnet_steps=steps, controlnet_images=images)
    (job,) = [j for j in default_jobs(ns) if j.name == "controlnet"]
    return job.args


def test_train_rows_then_reuse_them(tiny, spy, capsys):
    root, options, _ = tiny
    job = tables_job_args(steps=2, images=4)
    assert "--train" in job and "--run" not in job and "--curve" in job
    # the reproduce_tables job as it is, on two of its rows at a tiny size
    argv = [*job, "--train", "n1", "n3", "--train-batch-size", "2", "--batch-size", "4"]
    argv += ["--work-root", str(root / "runs"), "--out", str(root / "out"), "--cfg-options", *options]
    first = rc.main(argv)
    assert [a[a.index("--work-dir") + 1] for a in spy] == [str(root / "runs" / n) for n in ("n1", "n3")]
    for name, blocks in (("n1", 1), ("n3", 3)):
        assert (root / "runs" / name / "checkpoints" / "step_0000002" / "model.safetensors").is_file()
        assert f"copy_blocks={blocks}," in (root / "runs" / name / "config.py").read_text()
    table = (root / "out" / "table.md").read_text()
    assert "| ControlNet-Transformer N = 1 | 2 |" in table
    assert "| ControlNet-Transformer N = 3 (½ depth) | 2 |" in table
    assert [c["step"] for c in first["curve"]] == [2]  # the curve is the N = 3 row's checkpoints
    assert "| FID ↓ | SWD ×1e3 ↓ |" in table
    for r in first["rows"]:  # every row, the rendered images' too: SWD per level, its mean in the table
        assert set(r["swd"]) == {"32", "16", "8", "avg"} and r["swd"]["avg"] > 0
        assert f" | {r['swd']['avg']:.2f} | " in table
    err = capsys.readouterr().err
    assert "[ablation] 1/2 n1 (ControlNet-Transformer N = 1): training steps 0..2" in err

    runs = rc.resolve_runs(rc.parse_args(argv))  # the second invocation, up to its (unchanged) evaluation
    assert len(spy) == 2  # nothing retrained
    assert runs == [(r.label, root / "runs" / r.name) for r in ablation.select_rows(["n1", "n3"])]
    assert "[ablation] 2/2 n3 (ControlNet-Transformer N = 3 (½ depth)): already trained" in capsys.readouterr().err


def test_finished_partial_and_foreign_run_dirs(tiny, tmp_path):
    _, options, _ = tiny
    (row,) = ablation.select_rows(["n1"])
    cfg = launch.build_config(launch.parse_args(ablation.train_argv(row, tmp_path, 2, 2, options)))
    (tmp_path / "n1").mkdir()
    cfg.dump(str(tmp_path / "n1" / "config.py"))
    assert ablation.run_state(tmp_path / "n1", cfg, replace_stale=False) == "new"  # no checkpoint yet: (re)start
    (tmp_path / "n1" / "checkpoints" / "step_0000001").mkdir(parents=True)
    assert ablation.run_state(tmp_path / "n1", cfg, replace_stale=False) == "partial"  # resumed by the trainer
    (tmp_path / "n1" / "checkpoints" / "step_0000002").mkdir()
    assert ablation.run_state(tmp_path / "n1", cfg, replace_stale=False) == "done"
    other = launch.build_config(launch.parse_args(ablation.train_argv(row, tmp_path, 3, 2, options)))
    with pytest.raises(SystemExit, match=r"another config \(train.max_steps: 2 -> 3\)"):
        ablation.run_state(tmp_path / "n1", other, replace_stale=False)
    assert ablation.run_state(tmp_path / "n1", other, replace_stale=True) == "new"
    assert not (tmp_path / "n1").exists() and len(list(tmp_path.glob("n1.stale.*"))) == 1
    with pytest.raises(SystemExit, match="unknown ablation row"):
        ablation.select_rows(["n4"])
    with pytest.raises(SystemExit, match="does not train"):
        rc.resolve_runs(rc.parse_args(["--train", "n1", "--curve", "n3"]))


def test_rows_are_the_papers_n_on_the_tiny_teacher():
    """N in {1, depth/4, depth/2, depth - 1} of the config's teacher, and the UNet baseline."""
    depth = Config.fromfile(str(ablation.DEFAULT_CONFIG)).model.depth
    copies = [r.overrides["controlnet.copy_blocks"] for r in ablation.ROWS if "controlnet.copy_blocks" in r.overrides]
    assert copies == [1, math.ceil(depth / 4), depth // 2, depth - 1]
    assert [r.name for r in ablation.ROWS if r.overrides == {"controlnet.topology": "unet"}] == ["unet"]


def test_a_route_b_run_gets_the_controllable_lcm_rows(tiny, spy, tmp_path):
    """A run of the LCM method on a ControlNet (row b's config at a tiny size) is evaluated as the 4-step group:
    the student alone, its starting ControlNet on the teacher at 14 and 20 steps, route (a) (step 0) and route (b)."""
    from diffusion.model.controlnet import wrap_controlnet
    from tests.model.helpers import randomize

    root, options, _ = tiny
    student = randomize(MODELS.build(dict(BASE)), std=0.05, seed=3)
    save_file(student.state_dict(), str(tmp_path / "student.safetensors"))
    start = wrap_controlnet(MODELS.build(dict(BASE)), "transformer", 3)
    randomize(start.controlnet, std=0.02, seed=4)
    save_file(start.trainable_state_dict(), str(tmp_path / "controlnet.safetensors"))
    (row,) = ablation.select_rows(["b"])
    assert row.config == repo_path("configs/controlnet/tiny_controlnet_lcm.py")
    shared = [o for o in options if not o.startswith("weights.base=")]
    route = [
        f"weights.base={tmp_path / 'student.safetensors'}",
        f"weights.controlnet={tmp_path / 'controlnet.safetensors'}",
        f"weights.teacher={root / 'base.safetensors'}",
    ]
    launch.train([str(row.config), "--work-dir", str(tmp_path / "b"), "--cfg-options", *shared, *route,
                         "train.max_steps=2", "train.batch_size=2", "validation.every=100"])  # fmt: skip
    run = str(tmp_path / "b")
    result = rc.main(["--run", f"route (b)={run}", "--num-images", "4", "--batch-size", "4", "--curve", run,
                      "--curve-images", "4", "--out", str(tmp_path / "out")])  # fmt: skip
    settings = [(r["setting"], r.get("step")) for r in result["rows"]]
    assert settings[:2] == [("rendered images (metric ceiling)", None), ("teacher, no control", None)]
    assert settings[2:] == [
        ("LCM student 4 steps, no control", None),
        ("teacher + its ControlNet, DPM-Solver++ 14 steps", None),
        ("teacher + its ControlNet, DPM-Solver++ 20 steps", None),
        ("route (a): that ControlNet on the LCM student, 4 steps", 0),
        ("route (b), 4 steps", 2),
    ]
    assert "| route (b), 4 steps | 2 |" in result["table"]
    # the curve of a route-(b) run samples 4 LCM steps and starts at route (a): same images, same numbers
    rows = {r["setting"]: r for r in result["rows"]}
    assert [c["step"] for c in result["curve"]] == [0, 2]
    for point, row in zip(
        result["curve"], ("route (a): that ControlNet on the LCM student, 4 steps", "route (b), 4 steps")
    ):
        assert point["f1"] == pytest.approx(rows[row]["f1"]) and point["f1_conflict"] == pytest.approx(
            rows[row]["f1_conflict"]
        )
    assert (tmp_path / "out" / "plot.png").is_file()
