"""tools/eval_fid.py end to end on tiny inputs: ref, calc, sample (tiny random PixArt), attributes."""

import json
from pathlib import Path

import numpy as np
import pytest

from diffusion.data.embedded import VALIDATION_PROMPTS, make_embedded_data
from tests.commands import load_command
from tests.eval.helpers import render_folder, save_tiny_clip, tiny_attribute_net, tiny_checkpoint

main = load_command("tools/eval_fid.py").main

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    return str(tiny_attribute_net(tmp_path_factory))


def _last_number(capsys) -> float:
    return float(capsys.readouterr().out.strip().splitlines()[-1])


def test_ref_writes_mu_and_sigma_of_a_dataset_root(tmp_path, weights):
    make_embedded_data(tmp_path / "data", num=10)
    main(["ref", str(tmp_path / "data"), "-o", str(tmp_path / "ref.npz"), "--weights", weights, "--num", "8"])
    with np.load(tmp_path / "ref.npz") as ref:
        assert ref["mu"].shape == (16,) and ref["sigma"].shape == (16, 16)
        assert str(ref["features"]) == "embedded" and int(ref["num"]) == 8


def test_calc_prints_the_fid_last(tmp_path, weights, capsys):
    render_folder(tmp_path / "a", 40, seed=0)
    render_folder(tmp_path / "b", 40, seed=1)
    main(["calc", str(tmp_path / "a"), str(tmp_path / "a"), "--weights", weights])
    assert abs(_last_number(capsys)) < 1e-6
    main(["calc", str(tmp_path / "a"), str(tmp_path / "b"), "--weights", weights])
    fid = _last_number(capsys)
    assert fid > 0
    main(["ref", str(tmp_path / "b"), "-o", str(tmp_path / "b.npz"), "--weights", weights])
    main(["calc", str(tmp_path / "a"), str(tmp_path / "b.npz"), "--weights", weights])
    assert _last_number(capsys) == pytest.approx(fid, rel=1e-6)


def test_sample_then_attributes_end_to_end(tmp_path, weights, capsys):
    config, weights_file = tiny_checkpoint(tmp_path)
    prompts = VALIDATION_PROMPTS[:3]
    (tmp_path / "prompts.txt").write_text("\n".join(prompts) + "\n\n")
    out = tmp_path / "samples"
    args = ["sample", "--config", str(config), "--checkpoint", str(weights_file)]
    main(
        [
            *args,
            "--prompts",
            str(tmp_path / "prompts.txt"),
            "--out",
            str(out),
            "--sampler",
            "lcm",
            "--steps",
            "2",
            "--batch-size",
            "2",
            "--device",
            "cpu",
        ]
    )
    assert sorted(p.name for p in out.glob("*.png")) == ["00000.png", "00001.png", "00002.png"]
    assert (out / "prompts.txt").read_text().splitlines() == prompts
    capsys.readouterr()
    main(["attributes", str(out), "--weights", weights, "--device", "cpu"])
    result = json.loads(capsys.readouterr().out)
    assert set(result) == {"shape", "color", "size", "position", "background", "all"}
    assert all(0 <= v <= 1 for v in result.values())


class FakeRun:
    """Stands in for a wandb run: records what the tool logs."""

    def __init__(self, **kwargs):
        self.init, self.logged, self.summary, self.finished = kwargs, [], {}, False

    def log(self, metrics):
        self.logged.append(metrics)

    def finish(self):
        self.finished = True


def test_calc_and_clip_log_to_wandb(tmp_path, weights, capsys, monkeypatch):
    import wandb

    runs = []
    monkeypatch.setattr(wandb, "init", lambda **kwargs: runs.append(FakeRun(**kwargs)) or runs[-1])
    prompts = render_folder(tmp_path / "a", 8, seed=0)
    render_folder(tmp_path / "b", 8, seed=1)
    (tmp_path / "a" / "prompts.txt").write_text("\n".join(prompts) + "\n")
    main(["calc", str(tmp_path / "a"), str(tmp_path / "b"), "--weights", weights, "--log-wandb", "--wandb-run", "r1"])
    fid = _last_number(capsys)
    assert runs[0].init["id"] == "r1" and runs[0].init["resume"] == "allow" and runs[0].finished
    assert runs[0].logged == [{"eval/fid": pytest.approx(fid, abs=1e-6)}]
    clip = save_tiny_clip(tmp_path / "clip")
    main(["clip", str(tmp_path / "a"), "--clip", str(clip), "--device", "cpu", "--log-wandb"])
    score = _last_number(capsys)
    assert 0 <= score <= 100 and runs[1].logged == [{"eval/clip_score": pytest.approx(score, abs=1e-4)}]


def test_sample_refuses_a_folder_made_with_other_settings(tmp_path, capsys):
    """A rerun into the same --out resumes only with the same manifest; any other prompts, seed, batch size,
    sampler or checkpoint is refused naming each differing key (before: 'wrote 0 images', new prompts.txt beside
    the old PNGs, and the metrics scored old images against new prompts)."""
    config, weights_file = tiny_checkpoint(tmp_path)
    (tmp_path / "a.txt").write_text("\n".join(VALIDATION_PROMPTS[:2]) + "\n")
    (tmp_path / "b.txt").write_text("\n".join(VALIDATION_PROMPTS[2:4]) + "\n")
    out = tmp_path / "samples"
    base = ["sample", "--config", str(config), "--checkpoint", str(weights_file), "--out", str(out)]
    base += ["--sampler", "lcm", "--steps", "1", "--device", "cpu"]
    main([*base, "--prompts", str(tmp_path / "a.txt")])
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["seed"] == 0 and manifest["num_prompts"] == 2 and manifest["sampler"]["name"] == "lcm"
    first = {p.name: p.stat().st_mtime_ns for p in out.glob("*.png")}
    for extra, key in [
        (["--prompts", str(tmp_path / "b.txt")], "prompts_sha256"),
        (["--prompts", str(tmp_path / "a.txt"), "--seed", "1"], "seed"),
        (["--prompts", str(tmp_path / "a.txt"), "--batch-size", "1"], "batch_size"),
        (["--prompts", str(tmp_path / "a.txt"), "--steps", "2"], "sampler"),
    ]:
        with pytest.raises(ValueError, match=rf"{out}.*made with other settings.*{key}.*--overwrite"):
            main([*base, *extra])
    assert (out / "prompts.txt").read_text().splitlines() == VALIDATION_PROMPTS[:2]  # untouched
    capsys.readouterr()
    main([*base, "--prompts", str(tmp_path / "a.txt")])  # the same settings: resumes, nothing to do
    assert "wrote 0 images" in capsys.readouterr().out
    main([*base, "--prompts", str(tmp_path / "b.txt"), "--overwrite"])
    assert "wrote 2 images" in capsys.readouterr().out
    assert all(p.stat().st_mtime_ns != first[p.name] for p in out.glob("*.png"))
    assert (out / "prompts.txt").read_text().splitlines() == VALIDATION_PROMPTS[2:4]
    (out / "manifest.json").unlink()  # a folder from before manifests: unknown settings
    with pytest.raises(ValueError, match=rf"{out} has images but no manifest\.json.*--overwrite"):
        main([*base, "--prompts", str(tmp_path / "b.txt")])


def test_metrics_refuse_prompts_that_do_not_match_the_manifest(tmp_path, weights):
    config, weights_file = tiny_checkpoint(tmp_path)
    (tmp_path / "a.txt").write_text("\n".join(VALIDATION_PROMPTS[:2]) + "\n")
    out = tmp_path / "samples"
    main(["sample", "--config", str(config), "--checkpoint", str(weights_file), "--prompts", str(tmp_path / "a.txt")]
         + ["--out", str(out), "--sampler", "lcm", "--steps", "1", "--device", "cpu"])  # fmt: skip
    (out / "prompts.txt").write_text("\n".join(VALIDATION_PROMPTS[4:6]) + "\n")
    with pytest.raises(ValueError, match=r"prompts\.txt does not match .*manifest\.json"):
        main(["attributes", str(out), "--weights", weights, "--device", "cpu"])
    (out / "prompts.txt").write_text("\n".join(VALIDATION_PROMPTS[:2]) + "\n")
    (out / "00001.png").unlink()
    with pytest.raises(ValueError, match=r"has 1 images but its manifest\.json lists 2 prompts"):
        main(["calc", str(out), str(out), "--weights", weights])


def test_inception_without_weights_says_what_to_pass(tmp_path):
    render_folder(tmp_path / "a", 2)
    with pytest.raises(FileNotFoundError, match=r"--features inception needs --weights PATH.*docs/evaluation\.md"):
        main(["calc", str(tmp_path / "a"), str(tmp_path / "a"), "--features", "inception"])
