"""PixArt-Sigma checkpoints through the α loaders (diffusion/model/io.py, diffusers_format.py): the official layout
({'state_dict'}, pos_embed dropped, no micro-condition keys) with and without KV-compression weights, the null caption
file (T5("") written over y_embedding, or filling a diffusers folder's missing one), diffusers both ways, and the
refused cases with their reasons."""

import json
import warnings

import pytest
import torch
from diffusers import PixArtTransformer2DModel
from safetensors.torch import save_file

from diffusion.model.diffusers_format import (
    NULL_CAPTION_FILE,
    diffusers_to_official,
    load_diffusers,
    official_to_diffusers,
    save_diffusers,
)
from diffusion.model.io import load_model_weights, load_state_into, read_null_caption
from tests.model.helpers import KV_CONV, sigma_inputs, tiny, tiny_sigma


def _official(model: torch.nn.Module, path, pos_embed: bool = True, drop=()):
    """``model`` saved as an official Σ .pth: {'state_dict': ...} (+ pos_embed, which the 256 file lacks)."""
    state = {k: v for k, v in model.state_dict().items() if not k.startswith(drop)}
    if pos_embed:
        state["pos_embed"] = torch.zeros(1, 16, model.hidden_size)
    torch.save({"state_dict": state}, path)
    return path


def _null_file(path, length: int = 30, channels: int = 32, seed: int = 9):
    y = torch.randn(1, 1, length, channels, generator=torch.Generator().manual_seed(seed))
    save_file({"y": y}, str(path))  # the layout tools/make_null_caption.py writes
    return path, y[0, 0]


def _equal_states(a: torch.nn.Module, b: torch.nn.Module, skip: tuple[str, ...] = ()) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa if not k.endswith(skip))


@pytest.mark.parametrize("pos_embed", [True, False], ids=["with_pos_embed", "256_without"])
@pytest.mark.parametrize("kv", [False, True], ids=["plain", "kv_compress"])
def test_official_layout_round_trip(tmp_path, pos_embed, kv):
    kw = dict(kv_compress_config=KV_CONV) if kv else {}
    src, dst = tiny_sigma(**kw), tiny_sigma(**kw, seed=1)
    load_model_weights(dst, _official(src, tmp_path / "sigma.pth", pos_embed))
    assert _equal_states(src, dst)


def test_missing_compression_weights_start_from_mean_pool_with_a_warning(tmp_path):
    plain = tiny_sigma()  # a released checkpoint: no sr / norm
    kv = tiny_sigma(kv_compress_config=KV_CONV, seed=1)
    with pytest.warns(UserWarning, match=r"no KV-compression weights for \['blocks.1.attn.norm.bias'.*mean-pool"):
        load_model_weights(kv, _official(plain, tmp_path / "released.pth"))
    for i in (1, 2):
        attn = kv.blocks[i].attn
        assert torch.equal(attn.sr.weight, torch.full_like(attn.sr.weight, 0.25)) and not attn.sr.bias.any()
        assert torch.equal(attn.norm.weight, torch.ones(40)) and not attn.norm.bias.any()
    shared = plain.state_dict()
    assert all(torch.equal(v, kv.state_dict()[k]) for k, v in shared.items())
    # a block with only part of its compression weights stays strict
    partial = {
        k: v for k, v in tiny_sigma(kv_compress_config=KV_CONV).state_dict().items() if k != "blocks.2.attn.sr.bias"
    }
    with pytest.raises(KeyError, match=r"blocks\.2\.attn\.sr\.bias.*kv_compress_config"):
        load_state_into(kv, partial, "partial.safetensors")


@pytest.mark.parametrize(
    "src,dst,hint",
    [
        (lambda: tiny_sigma(kv_compress_config=KV_CONV), lambda: tiny_sigma(), "model.kv_compress_config"),
        (lambda: tiny_sigma(qk_norm=True), lambda: tiny_sigma(), "model.qk_norm"),
        (lambda: tiny_sigma(), lambda: tiny_sigma(qk_norm=True), "model.qk_norm"),
        (  # a PixArt-alpha MS checkpoint (size / aspect-ratio embedders) under a Σ config
            lambda: tiny(True, hidden_size=48, num_heads=3, model_max_length=30, depth=3),
            lambda: tiny_sigma(hidden_size=48, num_heads=3),
            "model.micro_condition",
        ),
    ],
    ids=["kv_into_plain", "qk_into_plain", "plain_into_qk", "alpha_ms_into_sigma"],
)
def test_other_sigma_options_are_named(tmp_path, src, dst, hint):
    with pytest.raises(KeyError, match=hint):
        load_model_weights(dst(), _official(src(), tmp_path / "other.pth"))


# ----------------------------------------------------------------------------------------------- null caption
def test_null_caption_file_replaces_the_checkpoints_y_embedding(tmp_path):
    src, dst = tiny_sigma(), tiny_sigma(seed=1)
    null_path, null = _null_file(tmp_path / "null.safetensors")
    with pytest.warns(UserWarning, match="differs from the null caption file.*null.safetensors"):
        load_model_weights(dst, _official(src, tmp_path / "sigma.pth"), null_caption=null_path)
    assert torch.equal(dst.y_embedder.y_embedding, null)
    assert _equal_states(src, dst, skip=("y_embedding",))
    # a checkpoint that already holds the file's T5("") (any Σ checkpoint we write) loads without a warning
    with torch.no_grad():
        src.y_embedder.y_embedding.copy_(null + 1e-4)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        load_model_weights(dst, _official(src, tmp_path / "same.pth"), null_caption=null_path)


def test_alpha_length_checkpoint_loads_under_the_sigma_null_caption(tmp_path):
    alpha = tiny_sigma(model_max_length=16)  # 120 tokens in PixArt-alpha, 300 in Sigma: only y_embedding differs
    sigma = tiny_sigma(seed=1)
    null_path, null = _null_file(tmp_path / "null.safetensors")
    with pytest.raises(ValueError, match="model_max_length"):
        load_model_weights(sigma, _official(alpha, tmp_path / "alpha.pth"))
    with pytest.warns(UserWarning, match=r"y_embedding \(16, 32\) differs"):
        load_model_weights(sigma, tmp_path / "alpha.pth", null_caption=null_path)
    assert torch.equal(sigma.y_embedder.y_embedding, null)


def test_missing_null_caption_file(tmp_path):
    src, dst = tiny_sigma(), tiny_sigma(seed=1)
    gone = tmp_path / "gone.safetensors"
    with pytest.warns(UserWarning, match="gone.safetensors not found.*stays.*y_embedding.*make_null_caption"):
        load_model_weights(dst, _official(src, tmp_path / "sigma.pth"), null_caption=gone)
    assert torch.equal(dst.y_embedder.y_embedding, src.y_embedder.y_embedding)
    save_diffusers(src, tmp_path / "hf")
    (tmp_path / "hf" / NULL_CAPTION_FILE).unlink()  # a diffusers Σ folder: no y_embedding
    with pytest.raises(
        FileNotFoundError, match="hf has no 'y_embedder.y_embedding'.*gone.safetensors.*--max-length 30"
    ):
        load_model_weights(dst, tmp_path / "hf", null_caption=gone)
    with pytest.raises(KeyError, match="null_caption file"):
        load_model_weights(dst, tmp_path / "hf")


def test_null_caption_file_of_another_shape_is_named(tmp_path):
    path, _ = _null_file(tmp_path / "null120.safetensors", length=12)
    with pytest.raises(ValueError, match=r"null120.safetensors holds y of shape \(1, 1, 12, 32\).*model_max_length"):
        read_null_caption(path, 30, 32)
    save_file({"uncond": torch.zeros(1)}, str(tmp_path / "nokey.safetensors"))
    with pytest.raises(KeyError, match="nokey.safetensors holds no 'y'"):
        read_null_caption(tmp_path / "nokey.safetensors", 30, 32)


# ----------------------------------------------------------------------------------------------- diffusers
@pytest.mark.parametrize("pe_interpolation", [0.5, 2.0])
def test_diffusers_both_ways(tmp_path, pe_interpolation):
    model = tiny_sigma(pe_interpolation=pe_interpolation)
    save_diffusers(model, tmp_path / "hf")
    config = json.loads((tmp_path / "hf" / "config.json").read_text())
    assert config["use_additional_conditions"] is False and config["interpolation_scale"] == pe_interpolation
    config_state, state = load_diffusers(tmp_path / "hf")
    assert state.keys() == model.state_dict().keys()
    assert all(torch.equal(state[k], v) for k, v in model.state_dict().items())
    # a diffusers Σ folder (no y_embedding) loads with the config's null caption file
    (tmp_path / "hf" / NULL_CAPTION_FILE).unlink()
    null_path, null = _null_file(tmp_path / "null.safetensors")
    back = tiny_sigma(pe_interpolation=pe_interpolation, seed=1)
    load_model_weights(back, tmp_path / "hf", null_caption=null_path)
    assert torch.equal(back.y_embedder.y_embedding, null) and _equal_states(model, back, skip=("y_embedding",))
    ref = PixArtTransformer2DModel.from_pretrained(tmp_path / "hf").eval()
    x, t, y, mask = sigma_inputs()
    with torch.no_grad():
        assert (back(x, t, y, mask) - ref(x, y.squeeze(1), t, encoder_attention_mask=mask).sample).abs().max() < 1e-4


@pytest.mark.parametrize("sampling", ["conv", "uniform"])
def test_kv_compressed_model_is_refused_by_diffusers_with_the_reason(tmp_path, sampling):
    model = tiny_sigma(kv_compress_config=dict(KV_CONV, sampling=sampling))
    with pytest.raises(ValueError, match="no KV-compressed self-attention"):
        save_diffusers(model, tmp_path / "hf")
    assert not (tmp_path / "hf").exists()  # nothing half-written
    if sampling == "conv":  # the state dict alone (whatever model it is paired with) is refused too
        with pytest.raises(ValueError, match=r"blocks\.1\.attn\.norm\.bias.*no KV-compressed"):
            official_to_diffusers(model.state_dict())


def test_qk_norm_is_refused_both_ways_with_the_reason(tmp_path):
    model = tiny_sigma(qk_norm=True)
    with pytest.raises(ValueError, match=r"LayerNorm\(hidden_size\).*LayerNorm\(head_dim\)"):
        save_diffusers(model, tmp_path / "hf")
    with pytest.raises(ValueError, match=r"attn\.q_norm.*LayerNorm\(head_dim\)"):
        official_to_diffusers(model.state_dict())
    per_head = {"transformer_blocks.0.attn1.norm_q.weight": torch.ones(20)}
    with pytest.raises(ValueError, match=r"norm_q.*LayerNorm\(head_dim\)"):
        diffusers_to_official(per_head, None)


def test_another_compression_factor_is_named(tmp_path):
    src = tiny_sigma(kv_compress_config=dict(KV_CONV, scale_factor=3))
    with pytest.raises(
        ValueError, match=r"attn\.sr\.weight: checkpoint \(40, 1, 3, 3\), model \(40, 1, 2, 2\).*kv_compress"
    ):
        load_model_weights(tiny_sigma(kv_compress_config=KV_CONV), _official(src, tmp_path / "sr3.pth"))
