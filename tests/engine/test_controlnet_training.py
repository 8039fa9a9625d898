"""A short ControlNet-Transformer run (PixArt-delta §4) on a small embedded default through the one trainer: the loss
falls, only the copies train, checkpoints hold only the trainable weights (the base is
``load_from``), resume from such a checkpoint reproduces the uninterrupted run, and ``load_model`` reads it."""

import pytest
import torch
from mmengine.config import Config
from safetensors.torch import save_file

from diffusion.build import load_model
from diffusion.data import collate, ensure_embedded_default, prepare_batch
from diffusion.data.default import EMBEDDED_MAX_LENGTH
from diffusion.engine import Trainer
from diffusion.engine import checkpoint as ckpt
from diffusion.registry import MODELS
from tests.model.helpers import randomize

MODEL = dict(
    type="PixArt_tiny",
    input_size=16,
    in_channels=12,
    hidden_size=32,
    depth=2,
    num_heads=2,
    caption_channels=64,
    model_max_length=EMBEDDED_MAX_LENGTH,
    class_dropout_prob=0.1,
)


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("cn_train")
    data = ensure_embedded_default(root / "data", num=48, text_encoder_path=root / "t5")
    base = randomize(MODELS.build(dict(MODEL)), std=0.05, seed=1)
    save_file(base.state_dict(), str(root / "base.safetensors"))
    cfg = dict(
        model=MODEL,
        load_from=str(root / "base.safetensors"),
        controlnet=dict(copy_blocks=1),
        method=dict(type="DiffusionLoss"),
        data=dict(
            type="FeatureDataset",
            root=str(data),
            resolution=32,
            max_length=EMBEDDED_MAX_LENGTH,
            json="data_info.json",
            load_control=True,
        ),
        codec=dict(type="PixelCodec", downsample=2, scale_factor=10.0),
        text_encoder=dict(path=str(root / "t5"), max_length=EMBEDDED_MAX_LENGTH),
        optimizer=dict(type="AdamW", lr=1e-2, weight_decay=3e-2),
        train=dict(max_steps=20, batch_size=16, num_workers=0, ema_rate=0.9, grad_clip=1.0, seed=3),
        checkpoint=dict(every=10, keep_last=2),
        log=dict(every=5),
    )
    return root, Config(cfg)


def _eval_loss(trainer, batch, c) -> float:
    torch.manual_seed(0)  # the same t and noise for every call
    with torch.no_grad():
        return trainer.method(trainer.model.eval(), {**batch, "c": c})[1]["mse"].item()


def test_controlnet_run_learns_the_control_and_saves_only_copies(setup):
    root, cfg = setup
    trainer = Trainer(cfg, root / "run")
    model = trainer.model
    assert {id(p) for p in trainer.params} == {id(p) for p in model.controlnet.parameters()}
    base_before = {k: v.clone() for k, v in model.base_model.state_dict().items()}
    dataset = trainer.stream.dataset
    items = [dataset[i] for i in range(len(dataset))]
    batch = prepare_batch(collate(items), 10.0)
    before = _eval_loss(trainer, batch, batch["c"])
    trainer.train()
    after = _eval_loss(trainer, batch, batch["c"])
    assert after < 0.95 * before, (before, after)  # same t and noise: the copies fitted the data
    assert all(torch.equal(v, base_before[k]) for k, v in model.base_model.state_dict().items())
    final = root / "run" / "checkpoints" / "step_0000020"
    for name in ("model", "ema"):
        saved = ckpt.load_tensors(final / f"{name}.safetensors")
        assert saved.keys() == model.trainable_state_dict().keys(), name
    loaded = load_model(cfg, final, use_ema=False)
    assert all(torch.equal(loaded.state_dict()[k], v) for k, v in model.state_dict().items())
    # resume from the step-10 checkpoint (trainable weights only) and reach the same final weights
    resumed = Trainer(cfg, root / "resumed", resume=str(root / "run" / "checkpoints" / "step_0000010"))
    resumed.train()
    for name in ("model", "ema"):
        a = ckpt.load_tensors(final / f"{name}.safetensors")
        b = ckpt.load_tensors(root / "resumed" / "checkpoints" / "step_0000020" / f"{name}.safetensors")
        assert all(torch.equal(a[k], b[k]) for k in a), name
