"""Training that survives faults (issue 10): preflight before step 1, resume that says what it takes from where,
graceful SIGTERM / SIGINT, a full disk, ``metrics.jsonl`` on resume and the data report in the log."""

import errno
import json
import os
import signal

import pytest
import torch
from mmengine.config import Config

from diffusion.data.text_encoder import make_tiny_text_encoder
from diffusion.engine import Trainer, find_latest, preflight
from diffusion.engine import checkpoint as ckpt
from diffusion.engine.data_loop import EpochBatchSampler, dropped_items
from diffusion.engine.preflight import check_sections
from diffusion.registry import DATASETS
from tests.engine.standins import MemDataset, tiny_config

DETERMINISTIC = dict(method=dict(type="EngineMSELoss", noise=False), data=dict(type="EngineMemDataset", size=8, std=0))


@DATASETS.register_module(name="FaultsMemDataset", force=True)
class ReportingDataset(MemDataset):
    """The stand-in dataset with a ``resolution`` (read by the sampling pipeline) and the FeatureDataset report."""

    def __init__(self, size: int = 8, std: float = 0.1, resolution: int = 8) -> None:
        super().__init__(size, std)
        self.resolution, self.skipped = resolution, 2

    def report(self) -> str:
        return f"ReportingDataset: {len(self)} items, {self.skipped} skipped\n  skipped a.npy: truncated"


def _metrics(work_dir) -> list[dict]:
    return [json.loads(line) for line in (work_dir / "metrics.jsonl").read_text().splitlines()]


def _train(cfg: dict, work_dir, resume=None) -> Trainer:
    trainer = Trainer(cfg, work_dir, resume=resume)
    trainer.finished = trainer.train()
    return trainer


def _pixart_config(tmp_path, text_channels: int) -> dict:
    """A real PixArt + T5 + pixel codec validation setup (no training data needed: it must fail in __init__)."""
    words = ["a", "red", "square"]
    encoder = make_tiny_text_encoder(tmp_path / "t5", d_model=text_channels, d_ff=16, num_layers=1, words=words)
    model = dict(type="PixArt_tiny", input_size=4, in_channels=12, hidden_size=32, depth=1, num_heads=2)
    model.update(caption_channels=8, model_max_length=4)
    return tiny_config(
        model=model,
        method=dict(type="EngineMSELoss"),
        data=dict(type="FaultsMemDataset", resolution=8),
        codec=dict(type="PixelCodec", downsample=2, scale_factor=1.0),
        text_encoder=dict(path=str(encoder), max_length=4),
        validation=dict(every=2, prompts=["a red square"], sampler=dict(name="ddim", steps=2, cfg_scale=1.0)),
    )


def test_bad_text_encoder_path_fails_before_step_1(tmp_path):
    cfg = tiny_config(
        text_encoder=dict(path=str(tmp_path / "no_t5"), max_length=3), validation=dict(every=2, prompts=["a"])
    )
    with pytest.raises(FileNotFoundError, match="no_t5"):
        Trainer(cfg, tmp_path / "run")
    assert not (tmp_path / "run" / "metrics.jsonl").exists()


def test_caption_channel_mismatch_fails_in_preflight(tmp_path):
    Trainer(_pixart_config(tmp_path / "ok", text_channels=8), tmp_path / "ok" / "run")  # the matching setup passes
    with pytest.raises(RuntimeError, match="preflight: sampling the validation prompts failed"):
        Trainer(_pixart_config(tmp_path / "bad", text_channels=16), tmp_path / "bad" / "run")


@pytest.mark.parametrize(
    ("overrides", "name"),
    [
        (dict(text_encoder=dict(pth="x", max_length=3)), "pth"),
        (dict(codec=dict(type="PixelCodec", scale_factr=0.5)), "scale_factr"),
        (dict(codec=dict(type="PixelCodex")), "PixelCodex"),
        (dict(codec=dict(type="AutoencoderKLCodec", scale_factor=0.18)), "path"),
    ],
)
def test_text_encoder_and_codec_keys_are_checked(tmp_path, overrides, name):
    with pytest.raises(KeyError, match=name):
        Trainer(tiny_config(**overrides), tmp_path)


def test_text_encoder_length_must_match_the_data():
    cfg = Config(tiny_config(data=dict(max_length=13), text_encoder=dict(path="t5", max_length=120)))
    with pytest.raises(KeyError, match="text_encoder.max_length"):
        check_sections(cfg)


def test_unwritable_work_dir_is_named(tmp_path):
    (tmp_path / "file").write_text("not a directory")
    with pytest.raises(OSError, match="work dir .*file/run is not writable"):
        Trainer(tiny_config(), tmp_path / "file" / "run")


def test_resume_uses_the_config_lr_and_says_so(tmp_path):
    _train(tiny_config(), tmp_path / "a")
    cfg = tiny_config(optimizer=dict(lr=4e-3))
    _train(cfg, tmp_path / "b", resume=str(tmp_path / "a" / "checkpoints" / "step_0000003"))
    ref = _train(cfg, tmp_path / "ref")  # the lr a fresh run of the new config has at each step
    assert [m["lr"] for m in _metrics(tmp_path / "b")] == [m["lr"] for m in _metrics(tmp_path / "ref")][3:]
    assert ref.optimizer.param_groups[0]["initial_lr"] == 4e-3
    log = (tmp_path / "b" / "train.log").read_text()
    assert "lr changed since the checkpoint: 0.01 -> 0.004" in log and "from the checkpoint:" in log


def test_resume_on_fewer_ranks_warns_about_the_global_batch(tmp_path):
    _train(tiny_config(train=dict(max_steps=3)), tmp_path / "a")
    step3 = tmp_path / "a" / "checkpoints" / "step_0000003"
    state = torch.load(step3 / "training_state.pt", weights_only=True)
    state["world_size"] = 2  # as written by a 2-rank run of the same config
    state["run"].update(world_size=2, global_batch=4)
    torch.save(state, step3 / "training_state.pt")
    trainer = _train(tiny_config(), tmp_path / "b", resume=str(step3))
    log = (tmp_path / "b" / "train.log").read_text()
    assert "world_size changed since the checkpoint: 2 -> 1" in log
    assert "global batch 4 -> 2 images per optimizer step; train.grad_accum=2 keeps it" in log
    assert trainer.step == 6


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_stop_signal_saves_at_the_step_boundary_and_resume_is_exact(tmp_path, monkeypatch, signum):
    cfg = tiny_config(checkpoint=dict(every=100))
    _train(cfg, tmp_path / "full")
    original = Trainer.train_step

    def signalled(self, batches):
        out = original(self, batches)
        if self.step == 3:  # the 4th step is running: the stop must wait for it to finish
            os.kill(os.getpid(), signum)
        return out

    monkeypatch.setattr(Trainer, "train_step", signalled)
    stopped = _train(cfg, tmp_path / "run")
    assert stopped.step == 4 and find_latest(tmp_path / "run").name == "step_0000004"
    assert not stopped.finished and stopped.stopped_by == signal.Signals(signum).name  # callers can tell
    assert signal.getsignal(signum) is not None and "stopped by" in (tmp_path / "run" / "train.log").read_text()
    monkeypatch.setattr(Trainer, "train_step", original)
    assert _train(cfg, tmp_path / "run", resume="auto").finished
    assert [m["loss"] for m in _metrics(tmp_path / "run")] == [m["loss"] for m in _metrics(tmp_path / "full")]


def test_tools_that_go_on_after_training_stop_when_a_signal_ended_it(tmp_path, monkeypatch):
    """make demo / make teacher / the ablation after a SIGTERM-stopped run: no asset is published from the partial
    checkpoint, no evaluation runs on it; the command says how to resume."""
    from mmengine.config import Config

    from diffusion.engine import require_finished
    from diffusion.experiments import assets

    require_finished(True, "unused")
    with pytest.raises(SystemExit, match="stopped by a signal.*resume"):
        require_finished(False, "run it again to resume")
    monkeypatch.setattr(assets, "ensure_embedded_default", lambda **kw: None)
    monkeypatch.setattr(assets, "Trainer", lambda cfg, work_dir, resume: type("T", (), {"train": lambda s: False})())
    cfg = Config(dict(data=dict(root=str(tmp_path / "data")), text_encoder=dict(path=str(tmp_path / "t5"))))
    with pytest.raises(SystemExit, match="nothing was published"):
        assets.train_and_publish(cfg, "x.py", tmp_path / "run", tmp_path / "asset", "digest", dict)
    assert not (tmp_path / "asset").exists()


@pytest.mark.parametrize("failure", ["safetensors", "torch_save"])
def test_full_disk_names_the_path_and_keeps_the_previous_checkpoint(tmp_path, monkeypatch, failure):
    if failure == "safetensors":  # safetensors reports the errno in its message
        target, error = "save_tensors", Exception("I/O error: No space left on device (os error 28)")
    else:  # libtorch's writer loses the errno: the free space tells
        target, error = "save_object", RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 576")
        real_usage = ckpt.shutil.disk_usage

        def usage(path):  # full while the partial checkpoint is on disk, room again once it is removed
            full = any((tmp_path / "checkpoints").glob("*.tmp"))
            return real_usage(path)._replace(free=4096 if full else 1 << 40)

        monkeypatch.setattr(ckpt.shutil, "disk_usage", usage)
    original = getattr(ckpt, target)

    def full(path, obj):
        if "step_0000006" in str(path):
            original(path, obj)  # a partial file, as a full disk leaves it
            raise error
        original(path, obj)

    monkeypatch.setattr(ckpt, target, full)
    with pytest.raises(OSError, match="no space left on device writing checkpoint .*step_0000006.tmp") as info:
        _train(tiny_config(), tmp_path)
    assert info.value.errno == errno.ENOSPC
    root = tmp_path / "checkpoints"
    assert [p.name for p in root.iterdir()] == ["step_0000003"]
    assert torch.load(root / "step_0000003" / "training_state.pt", weights_only=True)["step"] == 3


def test_a_killed_save_leaves_no_tmp_after_the_next_save(tmp_path):
    (tmp_path / "checkpoints" / "step_0000002.tmp").mkdir(parents=True)
    _train(tiny_config(train=dict(max_steps=3)), tmp_path)
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["step_0000003"]


def test_metrics_after_the_last_checkpoint_are_not_repeated_on_resume(tmp_path, monkeypatch):
    cfg = tiny_config(**DETERMINISTIC)
    _train(cfg, tmp_path / "full")
    original = Trainer.train_step

    def crash(self, batches):
        if self.step == 4:  # steps 4 and 5 (after the step-3 checkpoint) are logged, then the process dies
            raise SystemError("killed")
        return original(self, batches)

    monkeypatch.setattr(Trainer, "train_step", crash)
    with pytest.raises(SystemError):
        _train(cfg, tmp_path / "run")
    with open(tmp_path / "run" / "metrics.jsonl", "a") as f:
        f.write('{"step": 5, "lo')  # a line half-written by the killed process
    monkeypatch.setattr(Trainer, "train_step", original)
    _train(cfg, tmp_path / "run", resume="auto")
    got, ref = _metrics(tmp_path / "run"), _metrics(tmp_path / "full")
    assert [m["step"] for m in got] == [1, 2, 3, 4, 5, 6]
    assert [m["loss"] for m in got] == [m["loss"] for m in ref]
    assert "metrics.jsonl: dropped 2 line(s) after step 3" in (tmp_path / "run" / "train.log").read_text()


def test_dataset_size_report_and_drops_are_logged(tmp_path):
    # 9 items in batches of 2: 4 batches, 1 item dropped per epoch; 6 steps run through epochs 0 and 1
    _train(tiny_config(data=dict(type="FaultsMemDataset", size=9)), tmp_path)
    log = (tmp_path / "train.log").read_text()
    assert "dataset ReportingDataset: 9 items, 4 batches of 2 per rank per epoch on 1 rank(s), 1 items dropped" in log
    assert "ReportingDataset: 9 items, 2 skipped\n  skipped a.npy: truncated" in log
    assert "epoch 0: 4 batches per rank, 1 items dropped (drop_last), 2 items skipped" in log
    assert "epoch 1: 4 batches per rank" in log


def test_disk_space_check_refuses_and_warns(tmp_path, monkeypatch):
    real_usage = preflight.shutil.disk_usage
    monkeypatch.setattr(preflight.shutil, "disk_usage", lambda p: real_usage(p)._replace(free=250))
    with pytest.raises(OSError, match="no space left on device for a checkpoint") as info:
        preflight.check_disk_space(tmp_path, needed=300, keep_last=2)
    assert info.value.errno == errno.ENOSPC
    assert "a later save may fail" in preflight.check_disk_space(tmp_path, needed=100, keep_last=2)  # 250 < 3 x 100
    assert preflight.check_disk_space(tmp_path, needed=80, keep_last=2) is None  # 250 >= 3 x 80


def test_dropped_items_over_ranks():
    # 9 items on 2 ranks in batches of 2: the distributed sampler drops 1 (9 -> 8) and each rank has 2 full batches
    sampler = EpochBatchSampler(MemDataset(9), batch_size=2, num_replicas=2, rank=0, seed=0)
    assert len(sampler) == 2 and sampler.dropped == 1
    assert dropped_items(sampler, 9, 2, 2) == 1
    assert dropped_items(EpochBatchSampler(MemDataset(11), 2, 2, 1, 0), 11, 2, 2) == 3  # 11 -> 10 -> 2 x 2 x 2
