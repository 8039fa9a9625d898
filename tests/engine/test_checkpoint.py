"""Checkpoint files: atomic commit, pruning, latest lookup, ``weights.base`` and RNG state round trips."""

import random
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from diffusion.engine import Trainer
from diffusion.engine import checkpoint as ckpt
from diffusion.model.io import load_model_weights
from tests.engine.standins import TinyNet, tiny_config


def test_commit_is_atomic_and_latest_ignores_tmp(tmp_path):
    root = tmp_path / ckpt.CHECKPOINT_SUBDIR
    for step in (3, 6, 9):
        tmp = ckpt.begin_save(root, step)
        ckpt.save_tensors(tmp / "model.safetensors", {"w": torch.full((2,), float(step))})
        ckpt.commit(tmp)
    ckpt.begin_save(root, 12)  # a crashed save leaves only a .tmp directory
    assert ckpt.find_latest(tmp_path).name == "step_0000009"
    ckpt.prune(root, keep_last=2)
    assert [p.name for p in ckpt.list_checkpoints(root)] == ["step_0000006", "step_0000009"]
    assert ckpt.load_tensors(ckpt.find_latest(tmp_path) / "model.safetensors")["w"].tolist() == [9.0, 9.0]
    assert ckpt.find_latest(tmp_path / "nowhere") is None


@pytest.mark.parametrize("fmt", ["pth_official", "pth_plain", "safetensors"])
def test_load_weights_formats_drop_pos_embed(tmp_path, fmt):
    src, dst = TinyNet(), TinyNet()
    state = {k: v.clone() for k, v in src.state_dict().items()}
    state["pos_embed"] = torch.ones(1, 7)  # wrong shape on purpose: it must be dropped, not loaded
    path = tmp_path / ("w.safetensors" if fmt == "safetensors" else "w.pth")
    if fmt == "safetensors":
        save_file(state, path)
    else:
        torch.save({"state_dict": state} if fmt == "pth_official" else state, path)
    load_model_weights(dst, path)
    for name, value in src.state_dict().items():
        if name != "pos_embed":
            assert torch.equal(dst.state_dict()[name], value), name


def test_load_weights_names_bad_keys(tmp_path):
    state = TinyNet().state_dict()
    state["extra.weight"] = torch.zeros(1)
    del state["t_proj.bias"]
    torch.save(state, tmp_path / "w.pth")
    with pytest.raises(KeyError, match=r"t_proj\.bias.*extra\.weight"):
        load_model_weights(TinyNet(), tmp_path / "w.pth")


def test_rng_state_round_trip_with_weights_only(tmp_path):
    gen = torch.Generator().manual_seed(5)
    random.gauss(0, 1)  # populate python's cached gaussian
    np.random.standard_normal()
    ckpt.save_object(tmp_path / "rng.pt", ckpt.rng_state(gen))
    expected = (random.random(), np.random.standard_normal(3), torch.rand(3), torch.rand(3, generator=gen))
    ckpt.set_rng_state(torch.load(tmp_path / "rng.pt", weights_only=True), gen)
    got = (random.random(), np.random.standard_normal(3), torch.rand(3), torch.rand(3, generator=gen))
    assert got[0] == expected[0]
    assert np.array_equal(got[1], expected[1])
    assert torch.equal(got[2], expected[2]) and torch.equal(got[3], expected[3])


def test_claim_run_dir_resumes_only_runs_of_the_same_inputs(tmp_path):
    from diffusion.engine.checkpoint import claim_run_dir

    run = claim_run_dir(tmp_path / "run", "a" * 64)  # fresh dir: stamped
    (run / "checkpoints" / "step_0000250").mkdir(parents=True)
    assert claim_run_dir(run, "a" * 64) == run  # same inputs: kept for --resume auto
    with pytest.raises(SystemExit, match="other inputs"):
        claim_run_dir(run, "b" * 64)
    legacy = tmp_path / "legacy"
    (legacy / "checkpoints" / "step_0000250").mkdir(parents=True)
    with pytest.raises(SystemExit, match="unknown run"):
        claim_run_dir(legacy, "a" * 64)
    # "move": another input's run is renamed aside, never deleted, and a fresh dir takes its place
    run = claim_run_dir(run, "b" * 64, on_other="move")
    assert not (run / "checkpoints").exists()
    stale = [p for p in tmp_path.iterdir() if p.name.startswith("run.aaaaaaaa.")]
    assert len(stale) == 1 and (stale[0] / "checkpoints" / "step_0000250").is_dir()
    with pytest.raises(ValueError, match="on_other"):
        claim_run_dir(run, "b" * 64, on_other="delete")


# The step-3 checkpoint of tiny_config(train=dict(mixed_precision="fp16")) (the stand-ins, 6 steps, a checkpoint every
# 3) written on a CPU by the trainer of commit e22e861, before TrainState and the Checkpointer existed and before fp16
# overflows were counted apart (its training_state.pt has no overflow_total).
OLD_CHECKPOINT = Path(__file__).resolve().parent / "fixtures" / "step_0000003_e22e861"


def _same(a, b) -> bool:
    if isinstance(a, torch.Tensor):
        return isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b)
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, list | tuple):
        return isinstance(b, list | tuple) and len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    return a == b


@pytest.mark.skipif(torch.cuda.is_available(), reason="the checkpoint's noise generator state is a CPU generator's")
def test_a_checkpoint_written_before_the_train_state_resumes_into_the_same_state(tmp_path):
    """Resumed by today's trainer and saved again at once, it gives back the same files, every tensor and value equal
    (training_state.pt gains only overflow_total); training then goes on from step 3."""
    trainer = Trainer(tiny_config(train=dict(mixed_precision="fp16")), tmp_path, resume=str(OLD_CHECKPOINT))
    assert trainer.state.step == 3 and trainer.scaler.get_scale() == 65536.0
    again = trainer.save_checkpoint()
    assert sorted(p.name for p in again.iterdir()) == sorted(p.name for p in OLD_CHECKPOINT.iterdir())
    old, new = (torch.load(d / "training_state.pt", weights_only=True) for d in (OLD_CHECKPOINT, again))
    assert new.pop("overflow_total") == 0 and _same(old, new)
    assert _same(*(torch.load(d / "rng_rank0.pt", weights_only=True) for d in (OLD_CHECKPOINT, again)))
    for name in ("model", "ema", "method"):
        assert _same(*(ckpt.load_tensors(d / f"{name}.safetensors") for d in (OLD_CHECKPOINT, again))), name
    assert trainer.train() and trainer.state.step == 6 and trainer.method.steps.item() == 6


def test_one_name_for_a_step_folder_and_its_parsing():
    assert ckpt.step_name(5000) == "step_0005000" and ckpt.step_dir("r", 3) == Path("r") / "step_0000003"
    assert ckpt.parse_step("step_0005000") == 5000 and ckpt.parse_step(ckpt.step_name(12345678)) == 12345678
    assert ckpt.parse_step("step_0005000.tmp") is None and ckpt.parse_step("samples") is None
