"""A short ControlNet-Transformer run (PixArt-delta §4) on a small embedded default through the one trainer: the loss
falls, only the copies train, checkpoints hold only the trainable weights (the base is
``load_from``), resume from such a checkpoint reproduces the uninterrupted run, and ``load_model`` reads it."""

import numpy as np
import pytest
import torch
from mmengine.config import Config
from PIL import Image
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
        weights=dict(base=str(root / "base.safetensors")),
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
    dataset = trainer.data.dataset
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


PROMPTS = [
    "a large red circle at the top left on a gray background",
    "a small blue cross in the center on a black background",
]


def _with_validation(cfg, **validation):
    train = {**cfg.to_dict()["train"], "ema_rate": None}  # the grid samples the weights as they are
    return Config(
        {**cfg.to_dict(), "train": train, "validation": dict(every=1000, prompts=PROMPTS, seed=0, **validation)}
    )


def test_validation_grids_sample_under_the_control_beside_it(setup):
    from diffusion.data.embedded import prompt_edges
    from diffusion.engine.validation import make_grid

    root, cfg = setup
    trainer = Trainer(_with_validation(cfg, control="embedded"), root / "val")
    with torch.no_grad():  # non-zero projections: the control changes the samples
        for p in trainer.model.controlnet.parameters():
            p.add_(torch.randn(p.shape, generator=torch.Generator().manual_seed(1)) * 0.05)
    path = trainer.validate()  # the grid of step 0
    grid = torch.from_numpy(np.array(Image.open(path))).permute(2, 0, 1)
    edges = torch.from_numpy(prompt_edges(PROMPTS, 32)).permute(0, 3, 1, 2)
    sampler = trainer.method.sampler_defaults()
    controlled = trainer.validator.pipeline(PROMPTS, seed=0, control=edges, **sampler)
    plain = trainer.validator.pipeline(PROMPTS, seed=0, **sampler)
    assert not torch.equal(controlled, plain)
    want = make_grid(torch.stack([edges, controlled], 1).flatten(0, 1), columns=4)
    assert torch.equal(grid, want)  # (edge map | sample) pairs, ⌈√2⌉ = 2 pairs a row


def test_validation_control_from_files_with_an_annotator_and_its_errors(setup, tmp_path):
    from diffusion.data.annotators import read_control_image
    from diffusion.engine.validation import validation_control

    root, cfg = setup
    photo = tmp_path / "photo.png"
    Image.fromarray((torch.rand(40, 50, 3) * 255).byte().numpy()).save(photo)
    val = lambda **kw: {"control": None, "annotator": "image", "hed_path": None, **kw}  # noqa: E731
    got = validation_control(val(control=[str(photo)], annotator="canny"), PROMPTS, 32, 32)
    assert torch.equal(got, read_control_image(photo, 32, 32, "canny")) and got.shape == (1, 3, 32, 32)
    assert validation_control(val(control=[str(photo)] * 2), PROMPTS, 32, 32).shape == (2, 3, 32, 32)
    with pytest.raises(KeyError, match="3 images for 2 prompts"):
        validation_control(val(control=[str(photo)] * 3), PROMPTS, 32, 32)
    with pytest.raises(KeyError, match="missing.png"):
        validation_control(val(control=str(tmp_path / "missing.png")), PROMPTS, 32, 32)
    plain = Config({**cfg.to_dict(), "controlnet": None})
    with pytest.raises(KeyError, match="validation.control is set but the model is no ControlNet"):
        Trainer(_with_validation(plain, control="embedded"), root / "plain")
    with pytest.raises(KeyError, match="validation.annotator"):
        Trainer(_with_validation(cfg, control="embedded", annotator="sobel"), root / "bad")


def test_route_b_consistency_distillation_of_a_controlnet_trains_copies_and_resumes_exactly(setup):
    """Route (b): the LCM method on a ControlNet with the control passed, teacher base from weights.teacher; only the
    copies train and reach the checkpoint (and the target's), and resuming reproduces the uninterrupted run."""
    root, cfg = setup
    teacher = randomize(MODELS.build(dict(MODEL)), std=0.05, seed=7)
    save_file(teacher.state_dict(), str(root / "teacher.safetensors"))
    lcm = Config(
        {
            **cfg.to_dict(),
            "model": {**MODEL, "class_dropout_prob": 0.0},
            "weights": {**cfg.weights, "teacher": str(root / "teacher.safetensors")},
            "method": dict(type="LCMDistillation"),
            "train": dict(max_steps=4, batch_size=8, num_workers=0, ema_rate=None, grad_clip=1.0, seed=3),
            "checkpoint": dict(every=2, keep_last=2),
        }
    )
    trainer = Trainer(lcm, root / "lcm_b")
    assert {id(p) for p in trainer.params} == {id(p) for p in trainer.model.controlnet.parameters()}
    trainer.train()
    final = root / "lcm_b" / "checkpoints" / "step_0000004"
    weights = ckpt.load_tensors(final / "model.safetensors")
    target = ckpt.load_tensors(final / "method.safetensors")
    assert weights and all(k.startswith("controlnet.") for k in weights)
    assert target.keys() == {f"target.{k}" for k in weights}
    resumed = Trainer(lcm, root / "lcm_b_resumed", resume=str(root / "lcm_b" / "checkpoints" / "step_0000002"))
    resumed.train()
    again = root / "lcm_b_resumed" / "checkpoints" / "step_0000004"
    for name in ("model", "method"):
        a, b = ckpt.load_tensors(final / f"{name}.safetensors"), ckpt.load_tensors(again / f"{name}.safetensors")
        assert all(torch.equal(a[k], b[k]) for k in a), name


def test_fsdp_trains_the_controlnet_like_ddp_and_samples_its_grids(setup, tmp_path):
    """train.parallel='fsdp' on 2 ranks: the base's blocks and the copies are sharded units, the run matches DDP,
    and the real validation pipeline (its caption K/V reuse gathers the shards it reads) writes the same grids."""
    from tests.engine.test_distributed_lcm import _losses, _step_dir, _torchrun

    root, cfg = setup
    cfg = _with_validation(cfg, control="embedded").to_dict()
    cfg["train"] = dict(cfg["train"], max_steps=2, batch_size=4)
    cfg["checkpoint"], cfg["validation"]["every"] = dict(every=2, keep_last=1), 1
    runs = {}
    for parallel in ("ddp", "fsdp"):
        result = _torchrun(
            {**cfg, "train": dict(cfg["train"], parallel=parallel)}, tmp_path / parallel, real_pipeline=True
        )
        assert result.returncode == 0, result.stderr[-3000:]
        runs[parallel] = ckpt.load_tensors(_step_dir(tmp_path / parallel, 2) / "model.safetensors")
        assert sorted(p.name for p in (tmp_path / parallel / "samples").iterdir()) == [
            "step_0000001.png",
            "step_0000002.png",
        ]
    assert _losses(tmp_path / "fsdp") == pytest.approx(_losses(tmp_path / "ddp"), rel=1e-5)
    assert runs["fsdp"].keys() == runs["ddp"].keys() and all(
        ".copied_block." in k or "_proj" in k for k in runs["ddp"]
    )
    for key, value in runs["ddp"].items():
        torch.testing.assert_close(runs["fsdp"][key], value, rtol=0, atol=1e-5, msg=key)
    for name in ("step_0000001.png", "step_0000002.png"):
        fsdp, ddp = (np.asarray(Image.open(tmp_path / p / "samples" / name), dtype=int) for p in ("fsdp", "ddp"))
        assert np.abs(fsdp - ddp).max() <= 1, name
