"""The training loop on stand-ins: config validation, grad accumulation, exact resume, NaN handling, crash-safe
checkpoints and validation grids."""

import json
import math

import pytest
import torch
from PIL import Image

from diffusion.engine import Trainer, find_latest
from diffusion.engine import checkpoint as ckpt
from diffusion.engine.validation import Validator
from tests.engine.standins import tiny_config

DETERMINISTIC = dict(method=dict(type="EngineMSELoss", noise=False), data=dict(type="EngineMemDataset", size=8, std=0))


def _metrics(work_dir) -> list[dict]:
    return [json.loads(line) for line in (work_dir / "metrics.jsonl").read_text().splitlines()]


def _train(cfg: dict, work_dir, resume=None) -> Trainer:
    trainer = Trainer(cfg, work_dir, resume=resume)
    trainer.train()
    return trainer


@pytest.mark.parametrize(
    ("overrides", "name"),
    [
        (dict(extra_key=1), "extra_key"),
        (dict(train=dict(bogus=1)), "bogus"),
        (dict(checkpoint=dict(evry=5)), "evry"),
        (dict(train=dict(mixed_precision="fp8")), "mixed_precision"),
        (dict(method=None), "method"),
    ],
)
def test_bad_config_key_is_named(tmp_path, overrides, name):
    with pytest.raises(KeyError, match=name):
        Trainer(tiny_config(**overrides), tmp_path)


def test_a_fresh_run_into_a_work_dir_with_checkpoints_is_refused(tmp_path):
    """Without --resume, a second run in the same dir would restart at step 0 and let keep_last prune the first
    run's checkpoints (a newer step even prunes the new run's own): it is refused before anything is written."""
    cfg = tiny_config(train=dict(max_steps=4), checkpoint=dict(every=2, keep_last=1))
    _train(cfg, tmp_path / "run")
    before = sorted(p.name for p in (tmp_path / "run").rglob("*"))
    for max_steps in (6, 2):
        with pytest.raises(FileExistsError, match=r"(?s)run.*step_0000004.*--resume auto"):
            Trainer(tiny_config(train=dict(max_steps=max_steps)), tmp_path / "run")
    assert sorted(p.name for p in (tmp_path / "run").rglob("*")) == before
    assert _train(tiny_config(train=dict(max_steps=6)), tmp_path / "run", resume="auto").step == 6


def test_resume_auto_skips_an_incomplete_newest_checkpoint(tmp_path):
    """A newest step folder without its training_state.pt (deleted, or copied in part) is skipped with a warning
    naming it; the run resumes from the newest complete one. An explicit incomplete folder is an error naming it."""
    cfg = tiny_config(train=dict(max_steps=4), checkpoint=dict(every=2, keep_last=3))
    _train(cfg, tmp_path / "run")
    (ckpt.step_dir(tmp_path / "run" / ckpt.CHECKPOINT_SUBDIR, 4) / "training_state.pt").unlink()
    trainer = Trainer(tiny_config(train=dict(max_steps=6), checkpoint=dict(every=2)), tmp_path / "run", "auto")
    assert trainer.step == 2
    log = (tmp_path / "run" / "train.log").read_text()
    assert "step_0000004" in log and "incomplete" in log
    with pytest.raises(FileNotFoundError, match="step_0000004"):
        Trainer(cfg, tmp_path / "other", resume=str(ckpt.step_dir(tmp_path / "run" / ckpt.CHECKPOINT_SUBDIR, 4)))


def test_grad_accumulation_equals_big_batch(tmp_path):
    big = _train(tiny_config(**DETERMINISTIC, train=dict(batch_size=4, grad_accum=1, max_steps=3)), tmp_path / "a")
    acc = _train(tiny_config(**DETERMINISTIC, train=dict(batch_size=2, grad_accum=2, max_steps=3)), tmp_path / "b")
    for (name, p_big), p_acc in zip(big.model.named_parameters(), acc.model.parameters()):
        torch.testing.assert_close(p_acc, p_big, rtol=0, atol=1e-6, msg=name)
    losses = [m["loss"] for m in _metrics(tmp_path / "a")]
    assert [m["loss"] for m in _metrics(tmp_path / "b")] == pytest.approx(losses, abs=1e-6)
    assert losses[-1] < losses[0]


BUCKETS = dict(type="AspectRatioBatchSampler", table={"0.5": (4, 8), "1.0": (8, 8)})


@pytest.mark.parametrize("data_sampler", [None, BUCKETS], ids=["distributed_sampler", "buckets"])
def test_resume_reproduces_uninterrupted_run(tmp_path, data_sampler):
    # 5 (or 4 bucketed) batches per epoch: step 3 resumes mid-epoch and the run crosses an epoch boundary
    cfg = tiny_config(data=dict(size=10), train=dict(grad_accum=2), data_sampler=data_sampler)
    full = _train(cfg, tmp_path / "full")
    step3 = tmp_path / "full" / "checkpoints" / "step_0000003"
    _train(cfg, tmp_path / "resumed", resume=str(step3))
    ref = _metrics(tmp_path / "full")
    got = _metrics(tmp_path / "resumed")
    assert [m["step"] for m in got] == [4, 5, 6]
    for key in ("loss", "mse", "grad_norm", "lr"):
        assert [m[key] for m in got] == [m[key] for m in ref[3:]], key
    for name in ("model", "ema", "method"):
        a = ckpt.load_tensors(tmp_path / "full" / "checkpoints" / "step_0000006" / f"{name}.safetensors")
        b = ckpt.load_tensors(tmp_path / "resumed" / "checkpoints" / "step_0000006" / f"{name}.safetensors")
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), name
    assert full.method.steps.item() == 6


def test_checkpoint_files_load_safely(tmp_path):
    _train(tiny_config(train=dict(max_steps=3)), tmp_path)
    latest = find_latest(tmp_path)
    assert latest.name == "step_0000003"
    assert sorted(p.name for p in latest.iterdir()) == [
        "ema.safetensors",
        "method.safetensors",
        "model.safetensors",
        "rng_rank0.pt",
        "training_state.pt",
    ]
    state = torch.load(latest / "training_state.pt", weights_only=True)
    assert state["step"] == 3 and state["data"] == {"epoch": 0, "batch_in_epoch": 3}
    torch.load(latest / "rng_rank0.pt", weights_only=True)
    assert "blocks.0.weight" in ckpt.load_tensors(latest / "model.safetensors")
    assert (tmp_path / "config.py").is_file() and (tmp_path / "train.log").is_file()


def test_crash_mid_save_keeps_previous_checkpoint(tmp_path, monkeypatch):
    cfg = tiny_config()
    original = ckpt.save_tensors

    def failing(path, tensors):
        if "step_0000006" in str(path) and "ema" in str(path):
            raise OSError("disk full")
        original(path, tensors)

    monkeypatch.setattr(ckpt, "save_tensors", failing)
    with pytest.raises(OSError, match="disk full"):
        _train(cfg, tmp_path)
    root = tmp_path / "checkpoints"
    assert find_latest(tmp_path).name == "step_0000003"
    assert not (root / "step_0000006.tmp").exists() and not (root / "step_0000006").exists()
    assert torch.load(root / "step_0000003" / "training_state.pt", weights_only=True)["step"] == 3
    monkeypatch.setattr(ckpt, "save_tensors", original)
    _train(cfg, tmp_path, resume="auto")
    assert find_latest(tmp_path).name == "step_0000006" and not (root / "step_0000006.tmp").exists()


def test_nan_loss_skips_step(tmp_path):
    trainer = _train(tiny_config(method=dict(nan_calls=(1,))), tmp_path)
    metrics = _metrics(tmp_path)
    # the skipped step is not a step: 6 real optimizer steps are still done, each logged once
    assert [m["step"] for m in metrics] == [1, 2, 3, 4, 5, 6]
    assert all(math.isfinite(m["loss"]) for m in metrics)
    assert [m["nan_skipped"] for m in metrics] == [0, 1, 1, 1, 1, 1]
    assert trainer.method.steps.item() == 6  # after_optimizer_step only after real steps
    assert trainer.lr_scheduler.last_epoch == 6
    assert "non-finite loss" in (tmp_path / "train.log").read_text()


@pytest.mark.parametrize("precision", ["no", "fp16"])
def test_non_finite_gradients_skip_everything(tmp_path, precision):
    """A finite loss with infinite gradients (bf16 overflow: divergence; fp16: a GradScaler overflow, counted apart):
    the optimizer, lr schedule, EMA, method state and step counter do not move; the run still does its 4 real
    steps."""
    cfg = tiny_config(method=dict(inf_grad_calls=(0, 2)), train=dict(max_steps=4, mixed_precision=precision))
    trainer = _train(cfg, tmp_path / "skip")
    _train(tiny_config(train=dict(max_steps=4, mixed_precision=precision)), tmp_path / "clean")
    skipped = (trainer.state.nan_total, trainer.state.overflow_total)
    assert trainer.step == 4 and skipped == ((0, 2) if precision == "fp16" else (2, 0))
    assert trainer.method.steps.item() == 4 and trainer.lr_scheduler.last_epoch == 4
    assert trainer.optimizer.state[trainer.params[0]]["step"].item() == 4
    assert all(torch.isfinite(p).all() for p in trainer.model.parameters())
    assert all(torch.isfinite(v).all() for v in trainer.ema.shadow.values())
    assert [m["lr"] for m in _metrics(tmp_path / "skip")] == [m["lr"] for m in _metrics(tmp_path / "clean")]
    reported = "fp16 gradient overflow" if precision == "fp16" else "non-finite gradient norm"
    assert reported in (tmp_path / "skip" / "train.log").read_text()


def test_consecutive_nan_losses_abort(tmp_path):
    cfg = tiny_config(method=dict(nan_calls=tuple(range(2, 100))), train=dict(max_nan_steps=3))
    with pytest.raises(FloatingPointError, match="3 consecutive"):
        _train(cfg, tmp_path)


def test_consecutive_non_finite_gradients_abort_with_last_checkpoint_intact(tmp_path):
    cfg = tiny_config(method=dict(inf_grad_calls=tuple(range(4, 100))), train=dict(max_nan_steps=3))
    with pytest.raises(FloatingPointError, match="3 consecutive.*step_0000003"):
        _train(cfg, tmp_path)
    assert find_latest(tmp_path).name == "step_0000003"
    resumed = Trainer(cfg, tmp_path, resume="auto")
    assert resumed.step == 3 and all(torch.isfinite(p).all() for p in resumed.model.parameters())


class _FakePipeline:
    def __init__(self, model):
        self.model, self.calls = model, []

    def __call__(self, prompts, seed, **sampler):
        self.calls.append((list(prompts), seed, sampler))
        self.seen = {k: v.detach().clone() for k, v in self.model.state_dict().items()}
        torch.randn(3)  # consumes global RNG: the trainer must restore it
        value = int(self.model.blocks[0].weight.abs().sum() * 10) % 256
        return torch.full((len(prompts), 3, 8, 8), value, dtype=torch.uint8)


def test_validation_grids_use_ema_and_keep_training_stream(tmp_path, monkeypatch):
    built = []

    def build_pipeline(self, model):
        built.append(_FakePipeline(model))
        return built[-1]

    monkeypatch.setattr(Validator, "build_pipeline", build_pipeline)
    val = dict(every=2, prompts=["a", "b", "c"], seed=7)
    trainer = _train(tiny_config(validation=val, checkpoint=dict(every=100)), tmp_path / "val")
    _train(tiny_config(checkpoint=dict(every=100)), tmp_path / "plain")
    assert len(built) == 1 and len(built[0].calls) == 4  # the preflight's one-step dry run, then 3 grids
    assert built[0].calls[0] == (["a", "b", "c"], 7, {"steps": 1})
    assert built[0].calls[1] == (["a", "b", "c"], 7, {"steps": 2})
    assert sorted(p.name for p in (tmp_path / "val" / "samples").iterdir()) == [
        "step_0000002.png",
        "step_0000004.png",
        "step_0000006.png",
    ]
    assert Image.open(tmp_path / "val" / "samples" / "step_0000006.png").size == (16, 16)
    assert built[0].model is trainer.model  # no second copy: the EMA weights are swapped into the trained network
    for name, value in built[0].seen.items():  # the last grid (after the last step) saw exactly the EMA weights
        assert torch.equal(value, trainer.ema.shadow[name]), name
    assert not torch.equal(trainer.model.blocks[0].weight, trainer.ema.shadow["blocks.0.weight"])  # put back
    assert [m["loss"] for m in _metrics(tmp_path / "val")] == [m["loss"] for m in _metrics(tmp_path / "plain")]


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_mixed_precision_trains_fp32_weights(tmp_path, precision):
    trainer = _train(tiny_config(train=dict(mixed_precision=precision, max_steps=3)), tmp_path)
    assert all(p.dtype == torch.float32 for p in trainer.model.parameters())
    assert all(math.isfinite(m["loss"]) for m in _metrics(tmp_path))
    assert trainer.scaler.is_enabled() == (precision == "fp16")
