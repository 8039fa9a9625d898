"""tools/sample.py and tools/eval_fid.py take a PixArt-Sigma config: 300-token captions, T5("") from
``tools/make_null_caption.py --max-length 300`` as the null caption, KV compression (a checkpoint without ``sr`` /
``norm`` starts them at their mean-pool init), and resolution binning (``--binning``: sampled at the closest bucket,
resized and centre-cropped back); the PNGs equal what ``Pipeline`` gives for the same seed."""

from pathlib import Path

import numpy as np
import pytest
import torch
from mmengine.config import Config
from PIL import Image
from safetensors.torch import save_file

from diffusion.build import load_pipeline
from diffusion.data import ensure_tiny_text_encoder
from diffusion.registry import MODELS
from tests.commands import load_command
from tests.model.helpers import randomize

sample_main = load_command("tools/sample.py").main
eval_main = load_command("tools/eval_fid.py").main
null_main = load_command("tools/make_null_caption.py").main

BASES = Path(__file__).resolve().parents[2] / "configs" / "_base_"
PROMPTS = ["a large red circle at the top left on a gray background", "a small blue square in the center"]


@pytest.fixture(scope="module")
def sigma(tmp_path_factory):
    """A tiny Σ config on the embedded default's codec and T5 (300 tokens, no micro-conditions, block 1 of 2
    KV-compressed) and a random checkpoint of the uncompressed model (as a released Σ file: no sr / norm)."""
    root = tmp_path_factory.mktemp("sample_sigma")
    te_dir = ensure_tiny_text_encoder(root / "t5")
    null = null_main(["--text-encoder", str(te_dir), "--max-length", "300", "--out", str(root / "null.safetensors")])
    config = root / "sigma.py"
    config.write_text(
        f"_base_ = ['{BASES}/models/tiny.py', '{BASES}/datasets/embedded_32.py', '{BASES}/methods/diffusion.py']\n"
        "model = dict(type='PixArtMS_tiny', hidden_size=40, num_heads=2, depth=2, model_max_length=300,\n"
        "             micro_condition=False,\n"
        "             kv_compress_config=dict(sampling='conv', scale_factor=2, kv_compress_layer=[1]))\n"
        "data = dict(max_length=300)\n"
        f"text_encoder = dict(path='{te_dir}', max_length=300, clean_caption=False)\n"
        f"null_caption = '{null}'\n"
    )
    cfg = Config.fromfile(str(config))
    plain = randomize(MODELS.build(dict(cfg.model, kv_compress_config=None)), std=0.05)
    save_file(plain.state_dict(), str(root / "model.safetensors"))
    return dict(root=root, config=config, cfg=cfg)


def _png(path) -> torch.Tensor:
    return torch.from_numpy(np.array(Image.open(path))).permute(2, 0, 1)


def test_sample_bins_a_sigma_config_and_equals_the_pipeline(sigma, tmp_path, capsys):
    checkpoint = str(sigma["root"] / "model.safetensors")
    argv = [
        "--config",
        str(sigma["config"]),
        "--checkpoint",
        checkpoint,
        "--prompts",
        *PROMPTS,
        "--out",
        str(tmp_path),
    ]
    with pytest.warns(UserWarning, match=r"attn\.sr"):  # the released-file path: compression starts at mean-pool
        sample_main([*argv, "--sampler", "dpm", "--steps", "3", "--height", "30", "--width", "44", "--binning"])
    with pytest.warns(UserWarning, match=r"attn\.sr"):
        pipe = load_pipeline(sigma["cfg"], checkpoint)
    assert pipe.text_encoder.max_length == 300 and pipe.model.y_embedder.y_embedding.shape == (300, 64)
    bucket = pipe.binned_size(30, 44)
    assert bucket != (30, 44) and f"30x44 is sampled at {bucket[0]}x{bucket[1]}" in capsys.readouterr().out
    expected = pipe(PROMPTS, seed=0, binning=True, height=30, width=44, name="dpm", steps=3)
    assert expected.shape == (2, 3, 30, 44)
    assert torch.equal(_png(tmp_path / "s0_001.png"), expected[1])


def test_eval_fid_samples_a_sigma_config(sigma, tmp_path):
    (tmp_path / "prompts.txt").write_text("\n".join(PROMPTS) + "\n")
    out = tmp_path / "samples"
    argv = ["sample", "--config", str(sigma["config"]), "--checkpoint", str(sigma["root"] / "model.safetensors")]
    argv += ["--prompts", str(tmp_path / "prompts.txt"), "--out", str(out), "--sampler", "dpm", "--steps", "2"]
    with pytest.warns(UserWarning, match=r"attn\.sr"):
        assert eval_main([*argv, "--batch-size", "2", "--device", "cpu"]) in (None, 0)
    images = sorted(out.glob("*.png"))
    assert [p.name for p in images] == ["00000.png", "00001.png"] and _png(images[0]).shape == (3, 32, 32)
