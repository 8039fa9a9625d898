"""On-the-fly encoding (issue 19 item 3): images and captions from shards, encoded in the training step, give what
encoding the same images into caches and training from them gives. With a real VAE posterior (a tiny random
``AutoencoderKL``, std > 0) and the same noise: the same x0, y, y_mask, micro-conditions and control latent, and
through the trainer the same loss at step 1 and the same weights after it, for the teacher (DiffusionLoss), LCM
distillation and a ControlNet whose control is the shard's control image or a Canny map made on the fly."""

import pytest
import torch
from safetensors.torch import save_file

from diffusion.build import build_model
from diffusion.data import collate, extract_features, make_tiny_vae, prepare_batch
from diffusion.data.annotators import CannyAnnotator
from diffusion.data.codec import AutoencoderKLCodec
from diffusion.data.default import EMBEDDED_MAX_LENGTH
from diffusion.data.embedded import make_embedded_data
from diffusion.data.shards import ShardDataset, make_shards
from diffusion.data.text_encoder import TextEncoder, make_tiny_text_encoder
from diffusion.engine import Trainer
from diffusion.engine.data_source import build_encoder
from diffusion.registry import DATASETS

N, BATCH = 12, 4
CONTROLNET = {"controlnet": dict(copy_blocks=1)}
MODEL = dict(type="PixArt_tiny", input_size=16, in_channels=4, hidden_size=32, depth=2, num_heads=2,
             caption_channels=64, model_max_length=EMBEDDED_MAX_LENGTH, class_dropout_prob=0.1)  # fmt: skip


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """Embedded images with their edge maps; caches made with a tiny VAE: captions, latents and control latents of
    the edge images (``cached``) or of the Canny maps of the images (``canny``); shards of the same folder; a base."""
    root = tmp_path_factory.mktemp("on_the_fly")
    t5_dir, vae_dir = make_tiny_text_encoder(root / "t5"), make_tiny_vae(root / "vae")
    t5 = TextEncoder.from_pretrained(t5_dir, max_length=EMBEDDED_MAX_LENGTH)
    vae = AutoencoderKLCodec(vae_dir)
    for name, annotator in (("cached", None), ("canny", CannyAnnotator())):
        make_embedded_data(root / name, num=N, seed=0)
        batches = dict(text_batch_size=5, vae_batch_size=5)  # other batches than training's
        extract_features(root / name, t5, vae, 32, control=True, annotator=annotator, progress=False, **batches)
    make_shards(root / "cached", root / "shards", per_shard=4, progress=False)
    torch.manual_seed(0)
    base = build_model({"model": MODEL}, load_weights=False)
    with torch.no_grad():
        for p in base.parameters():  # no zero-init output layer: every path computes something
            p.add_(torch.randn_like(p) * 0.05)
    save_file(base.state_dict(), str(root / "base.safetensors"))
    controlnet = build_model({"model": MODEL, "weights": dict(base=str(root / "base.safetensors")), **CONTROLNET})
    with torch.no_grad():  # the zero-init projections made non-zero: at init the control would change nothing
        for p in controlnet.controlnet.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    save_file(controlnet.trainable_state_dict(), str(root / "controlnet.safetensors"))
    return root


def _config(root, data: str, method: dict | None = None, control: str | None = None, **sections) -> dict:
    """A tiny config on the setup's data: ``data`` 'cached' / 'canny' (feature caches) or 'shards'; ``control``
    None, 'image' (the items' control images) or 'canny'."""
    if data == "shards":
        data_cfg = dict(type="ShardDataset", urls=str(root / "shards" / "{00000..00002}.tar"), resolution=32,
                        shuffle_buffer=0, shuffle_shards=False, load_control=control == "image")  # fmt: skip
    else:
        data_cfg = dict(type="FeatureDataset", root=str(root / data), resolution=32, max_length=EMBEDDED_MAX_LENGTH,
                        load_control=control is not None)  # fmt: skip
    cfg = dict(
        model=MODEL,
        weights=dict(base=str(root / "base.safetensors")),
        method=method or dict(type="DiffusionLoss", pred_sigma=True),
        data=data_cfg,
        codec=dict(type="AutoencoderKLCodec", path=str(root / "vae"), scale_factor=0.5),
        text_encoder=dict(path=str(root / "t5"), max_length=EMBEDDED_MAX_LENGTH),
        optimizer=dict(type="AdamW", lr=1e-2, weight_decay=0.0),
        train=dict(max_steps=1, batch_size=BATCH, num_workers=0, ema_rate=0.9, seed=5),
        checkpoint=dict(every=100),
        log=dict(every=1),
        **sections,
    )
    if control is not None:
        cfg["controlnet"] = dict(copy_blocks=1)
        cfg["weights"]["controlnet"] = str(root / "controlnet.safetensors")
    if control == "canny" and data == "shards":
        cfg["encoding"] = dict(annotator="canny")
    return cfg


def _shard_batch(root, load_control: bool = True) -> dict:
    urls = str(root / "shards" / "{00000..00002}.tar")
    stream = ShardDataset(urls, resolution=32, shuffle_buffer=0, load_control=load_control).stream(BATCH, seed=1)
    return next(iter(stream))


def _cached_batch(root, data: str, keys: list[str], load_control: bool = True) -> dict:
    dataset = DATASETS.build(dict(type="FeatureDataset", root=str(root / data), resolution=32,
                                  max_length=EMBEDDED_MAX_LENGTH, load_control=load_control))  # fmt: skip
    return collate([dataset[int(key)] for key in keys])  # make_shards' key = the item's index in data_info.json


def _assert_same_prepared(encoded: dict, cached: dict) -> None:
    assert encoded.keys() == cached.keys()
    for key in ("x0", "y", "c"):
        if key in cached:
            torch.testing.assert_close(encoded[key], cached[key], rtol=1e-5, atol=1e-5, msg=key)
    assert torch.equal(encoded["y_mask"], cached["y_mask"]) and encoded["prompt"] == cached["prompt"]
    for key in ("img_hw", "aspect_ratio"):
        assert torch.equal(encoded["data_info"][key], cached["data_info"][key]), key


@pytest.mark.parametrize("control", ["image", "canny"])
def test_an_encoded_batch_is_the_cached_one_with_the_same_noise(setup, control):
    batch = _shard_batch(setup, load_control=control == "image")
    cfg = _config(setup, "cached" if control == "image" else "canny", control=control)
    annotator = CannyAnnotator() if control == "canny" else None
    encoder = build_encoder(cfg, torch.device("cpu"), torch.float32, annotator)
    cached = _cached_batch(setup, cfg["data"]["root"].rsplit("/", 1)[-1], batch["key"])
    scale = encoder.scale_factor
    assert scale == 0.5
    want = prepare_batch(cached, scale, torch.Generator().manual_seed(3))
    got = encoder(batch, torch.Generator().manual_seed(3))
    _assert_same_prepared(got, want)
    other = encoder(batch, torch.Generator().manual_seed(4))  # the posterior is sampled, not its mean
    assert not torch.allclose(other["x0"], got["x0"]) and not torch.allclose(other["c"], got["c"])
    mean, std = encoder.codec.encode(batch["image"].float() / 127.5 - 1)
    draws = torch.stack([encoder(batch, torch.Generator().manual_seed(s))["x0"] for s in range(64)])
    z = (draws - mean * scale) / (std * scale)  # the codec's posterior, scaled: z ~ N(0, 1) in every element
    assert abs(z.mean().item()) < 0.01 and abs(z.std().item() - 1) < 0.01


def _first_step(cfg: dict, work, batch: dict) -> tuple[dict, dict[str, torch.Tensor]]:
    trainer = Trainer(cfg, work)
    out = trainer.train_step(iter([batch]))
    return out, {k: v.detach().clone() for k, v in trainer.model.named_parameters() if v.requires_grad}


LCM = dict(type="LCMDistillation", w=4.5, num_ddim_steps=50, ema_decay=0.95, loss_type="huber", huber_c=0.001)


@pytest.mark.parametrize(
    ("method", "control"),
    [(None, None), (LCM, None), (None, "image"), (None, "canny")],
    ids=["teacher", "lcm", "controlnet_image", "controlnet_canny"],
)
def test_step_one_from_shards_equals_step_one_from_caches(setup, tmp_path, method, control):
    """The same items through both data paths (the shard stream's first batch, the same keys from the caches): the
    trainer's step 1 has the same loss, gradient norm and resulting weights."""
    raw = _shard_batch(setup, load_control=control == "image")
    cache_data = "canny" if control == "canny" else "cached"
    cached = _cached_batch(setup, cache_data, raw["key"], load_control=control is not None)
    want, want_weights = _first_step(_config(setup, cache_data, method, control), tmp_path / "cached", cached)
    got, got_weights = _first_step(_config(setup, "shards", method, control), tmp_path / "shards", raw)
    for key in want:
        assert got[key] == pytest.approx(want[key], rel=1e-5, abs=1e-7), key
    assert got_weights.keys() == want_weights.keys()
    for name in want_weights:
        torch.testing.assert_close(got_weights[name], want_weights[name], rtol=1e-5, atol=1e-6, msg=name)
    log = (tmp_path / "shards" / "train.log").read_text()
    assert "on-the-fly encoding: AutoencoderKLCodec" in log and "ShardStream rank 0" in log
