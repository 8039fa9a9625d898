"""The PixArt-Sigma configs hold the official Σ facts (facts sheet §1-§5): per released size the model type, latent
size and pe_interpolation; 300-token T5 without caption cleaning; the SDXL VAE's 0.13025; the 40 ASPECT_RATIO_2048
buckets at 2K; KV compression on blocks 14-27 only in the kvcompress config; CAME with the official arguments and
each recipe's lr / warmup / batch / clip; the LCM hyperparameters. Models are built on the meta device."""

from pathlib import Path

import pytest
import torch
from mmengine.config import Config

from diffusion.data.buckets import resolve_table
from diffusion.registry import MODELS

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
CAME = dict(type="CAME", weight_decay=0.0, betas=(0.9, 0.999, 0.9999), eps=(1e-30, 1e-16))
NULL_CAPTION = "output/pretrained_models/null_caption_t5_300.safetensors"
# leaf -> (model type, input_size, pe_interpolation, resolution, bucket table, lr, warmup, batch per GPU)
RECIPES = {
    "pixart/pixart_sigma_xl2_img256.py": ("PixArtSigma_XL_2", 32, 0.5, 256, None, 2e-5, 1000, 64),
    "pixart/pixart_sigma_xl2_img512_ms.py": ("PixArtSigmaMS_XL_2", 64, 1.0, 512, "ASPECT_RATIO_512", 2e-5, 1000, 2),
    "pixart/pixart_sigma_xl2_img1024_ms.py": (
        "PixArtSigmaMS_XL_2",
        128,
        2.0,
        1024,
        "ASPECT_RATIO_1024",
        2e-5,
        1000,
        2,
    ),
    "pixart/pixart_sigma_xl2_img1024_ms_kvcompress.py": (
        "PixArtSigmaMS_XL_2",
        128,
        2.0,
        1024,
        "ASPECT_RATIO_1024",
        2e-5,
        500,
        4,
    ),
    "pixart/pixart_sigma_xl2_img2k_ms.py": ("PixArtSigmaMS_XL_2", 256, 4.0, 2048, "ASPECT_RATIO_2048", 2e-5, 100, 4),
    "lcm/pixart_sigma_xl2_img1024_lcm.py": ("PixArtSigmaMS_XL_2", 128, 2.0, 1024, "ASPECT_RATIO_1024", 1e-5, 100, 12),
    "lcm/pixart_sigma_xl2_img1024_lcm_lora.py": (
        "PixArtSigmaMS_XL_2",
        128,
        2.0,
        1024,
        "ASPECT_RATIO_1024",
        1e-5,
        100,
        16,
    ),
    "controlnet/pixart_sigma_xl2_img1024_controlnet.py": ("PixArtSigmaMS_XL_2", 128, 2.0, 1024, None, 2e-5, 0, 4),
}


def _depth(path: Path) -> int:
    """Levels of the ``_base_`` chain of a config file (a file without bases is 1)."""
    bases = Config._get_base_files(str(path))
    return 1 + max((_depth((path.parent / b).resolve()) for b in bases), default=0)


@pytest.mark.parametrize("leaf", sorted(RECIPES))
def test_sigma_config_holds_the_official_facts(leaf):
    cfg = Config.fromfile(str(CONFIGS / leaf))
    model_type, latent, pe, resolution, table, lr, warmup, batch = RECIPES[leaf]
    assert _depth(CONFIGS / leaf) <= 3
    assert (cfg.model.type, cfg.model.input_size, cfg.model.pe_interpolation) == (model_type, latent, pe)
    assert cfg.model.grad_checkpointing is True and latent * 8 == resolution == cfg.data.resolution
    with torch.device("meta"):
        model = MODELS.build(dict(cfg.model))
    assert model.model_max_length == 300 and model.y_embedder.y_embedding.shape == (300, 4096)
    assert not model.use_micro_conditions and not model.qk_norm
    assert cfg.text_encoder.max_length == cfg.data.max_length == 300 and cfg.text_encoder.clean_caption is False
    assert cfg.codec.type == "AutoencoderKLCodec" and cfg.codec.scale_factor == 0.13025
    assert cfg.weights.null_caption == NULL_CAPTION
    assert cfg.get("data_sampler", {}).get("table") == table and bool(cfg.data.get("multi_scale")) == bool(table)
    if table is not None:
        assert len(resolve_table(table)) == 40
    assert cfg.optimizer.lr == lr and cfg.lr_schedule.warmup_steps == warmup and cfg.train.batch_size == batch
    assert cfg.train.grad_clip == 0.01 and cfg.train.mixed_precision == "bf16" and cfg.train.get("auto_lr") is None
    if cfg.get("controlnet"):  # the α ControlNet recipe on the Σ base
        assert cfg.optimizer.type == "AdamW" and cfg.train.grad_accum == 4
        assert cfg.controlnet.copy_blocks == 13 and cfg.data.load_control is True
    else:
        assert {k: cfg.optimizer[k] for k in CAME} == CAME
    compressed = [i for i, block in enumerate(model.blocks) if block.attn.sr_ratio > 1]
    if "kvcompress" in leaf:
        assert compressed == list(range(14, 28)) and {model.blocks[i].attn.sampling for i in compressed} == {"conv"}
        assert model.blocks[14].attn.sr.weight.shape == (1152, 1, 2, 2)
    else:
        assert compressed == [] and model.kv_compress_config is None


def test_sigma_xl2_has_the_released_parameter_count():
    cfg = Config.fromfile(str(CONFIGS / "pixart/pixart_sigma_xl2_img1024_ms.py"))
    with torch.device("meta"):
        model = MODELS.build(dict(cfg.model))
    assert sum(p.numel() for p in model.parameters()) == 610_856_096  # the diffusers safetensors / 4 bytes


def test_sigma_lcm_configs_hold_the_official_lcm_settings():
    lcm = Config.fromfile(str(CONFIGS / "lcm/pixart_sigma_xl2_img1024_lcm.py"))
    m = lcm.method
    assert (m.type, m.w, m.num_ddim_steps, m.loss_type, m.huber_c, m.ema_decay) == (
        "LCMDistillation",
        4.5,
        50,
        "huber",
        0.001,
        0.95,
    )
    assert m.null_caption == "learned" and m.lora is None and lcm.train.ema_rate is None
    assert lcm.weights.teacher.endswith("PixArt-Sigma-XL-2-1024-MS.pth")
    lora = Config.fromfile(str(CONFIGS / "lcm/pixart_sigma_xl2_img1024_lcm_lora.py"))
    assert dict(lora.method.lora) == dict(rank=32, alpha=8) and lora.method.null_caption == NULL_CAPTION
