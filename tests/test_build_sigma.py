"""diffusion/build.py with PixArt-Sigma configs: ``weights.null_caption`` (a T5("") file) is the model's
y_embedding for the trainer's start (``build_model``: over ``weights.base``, or from scratch) and for sampling
(``load_model``: a diffusers Σ folder without y_embedding); a KV-compressed config fine-tunes from a released
checkpoint (no sr / norm weights), its ControlNet copies included."""

import pytest
import torch
from safetensors.torch import save_file

from diffusion.build import build_model, load_model
from diffusion.config import check_top_level
from diffusion.model.controlnet import PixArtControlNet
from diffusion.model.diffusers_format import NULL_CAPTION_FILE, save_diffusers
from tests.model.helpers import KV_CONV, SIGMA_ARCH, tiny_sigma

MODEL = dict(SIGMA_ARCH, type="PixArtMS", depth=3, micro_condition=False)


@pytest.fixture
def files(tmp_path):
    released = tiny_sigma()  # no KV-compression weights, as every released Σ checkpoint
    torch.save({"state_dict": dict(released.state_dict(), pos_embed=torch.zeros(1, 16, 40))}, tmp_path / "sigma.pth")
    null = torch.randn(1, 1, 30, 32, generator=torch.Generator().manual_seed(5))
    save_file({"y": null}, str(tmp_path / "null_caption.safetensors"))
    return tmp_path, released, null[0, 0]


def test_null_caption_is_a_weight_source_and_the_old_top_level_key_still_reads():
    check_top_level(dict(model={}, method={}, data={}, optimizer={}, train={}, null_caption="null.safetensors"))
    check_top_level(dict(model={}, method={}, data={}, optimizer={}, train={}, weights=dict(null_caption="n")))


def test_build_model_takes_the_null_caption_over_the_base_and_from_scratch(files):
    tmp, released, null = files
    null_file = str(tmp / "null_caption.safetensors")
    cfg = dict(model=MODEL, weights=dict(base=str(tmp / "sigma.pth"), null_caption=null_file))
    with pytest.warns(UserWarning, match="differs from the null caption file"):
        model = build_model(cfg)
    assert torch.equal(model.y_embedder.y_embedding, null)
    assert torch.equal(model.blocks[0].attn.qkv.weight, released.blocks[0].attn.qkv.weight)
    scratch = build_model({**cfg, "weights": dict(null_caption=null_file)})
    assert torch.equal(scratch.y_embedder.y_embedding, null)
    with pytest.raises(FileNotFoundError, match="missing.safetensors.*make_null_caption"):
        build_model({**cfg, "weights": dict(null_caption=str(tmp / "missing.safetensors"))})
    no_weights = build_model({**cfg, "weights": dict(null_caption=null_file)}, load_weights=False)
    assert not no_weights.y_embedder.y_embedding.equal(null)
    with pytest.warns(FutureWarning, match="config key null_caption is now weights.null_caption"):
        old = build_model(dict(model=MODEL, load_from=str(tmp / "sigma.pth"), null_caption=null_file))
    assert all(torch.equal(old.state_dict()[k], v) for k, v in model.state_dict().items())


def test_kv_compressed_config_fine_tunes_a_released_checkpoint(files):
    tmp, released, _ = files
    cfg = dict(model=dict(MODEL, kv_compress_config=KV_CONV), weights=dict(base=str(tmp / "sigma.pth")))
    with pytest.warns(UserWarning, match=r"blocks\.1\.attn\.sr\.weight.*mean-pool"):
        model = build_model(cfg)
    assert torch.equal(model.blocks[1].attn.sr.weight, torch.full((40, 1, 2, 2), 0.25))
    assert torch.equal(model.blocks[2].mlp.fc1.weight, released.blocks[2].mlp.fc1.weight)
    with pytest.warns(UserWarning, match="mean-pool"):
        cn = build_model({**cfg, "controlnet": dict(copy_blocks=2)})
    assert isinstance(cn, PixArtControlNet)
    copy_attn = cn.controlnet[1].copied_block.attn  # copy of block 1: compressed like it, from its loaded weights
    assert copy_attn.sr_ratio == 2 and torch.equal(copy_attn.sr.weight, cn.base_model.blocks[1].attn.sr.weight)


def test_load_model_of_a_diffusers_sigma_folder_needs_the_null_caption(files):
    tmp, released, null = files
    save_diffusers(released, tmp / "hf" / "transformer")
    (tmp / "hf" / "transformer" / NULL_CAPTION_FILE).unlink()  # as the PixArt-alpha/PixArt-Sigma-XL-2-* folders
    cfg = dict(model=MODEL, null_caption=str(tmp / "null_caption.safetensors"))
    model = load_model(cfg, tmp / "hf")
    assert torch.equal(model.y_embedder.y_embedding, null) and not model.training
    assert torch.equal(model.final_layer.linear.weight, released.final_layer.linear.weight)
    with pytest.raises(FileNotFoundError, match="has no 'y_embedder.y_embedding'.*absent.safetensors"):
        load_model({**cfg, "null_caption": str(tmp / "absent.safetensors")}, tmp / "hf")
