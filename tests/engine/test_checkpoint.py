"""Checkpoint files: atomic commit, pruning, latest lookup, ``load_from`` weights and RNG state round trips."""

import random

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from diffusion.engine import checkpoint as ckpt
from diffusion.model.io import load_model_weights
from tests.engine.standins import TinyNet


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
