"""Invariants of the PixArt transformer: padding, zero init, checkpoint keys, precisions, loading."""

import pytest
import torch

from diffusion.model import PixArt, PixArt_XL_2, PixArtMS, PixArtMS_XL_2
from diffusion.model.io import load_model_weights
from diffusion.registry import MODELS
from tests.model.helpers import inputs, tiny


def test_padded_caption_tokens_do_not_change_output():
    model = tiny(True)
    x, t, y, mask, info = inputs()
    y2 = torch.where(mask[:, None, :, None].bool(), y, torch.randn_like(y) * 10)  # garbage at padded positions
    with torch.no_grad():
        assert torch.allclose(model(x, t, y, mask, info), model(x, t, y2, mask, info), atol=1e-5)


def test_trimming_is_exact_against_full_length():
    model = tiny(False)
    x, t, y, mask, info = inputs()
    full = mask.clone()
    full[:, -1] = 0  # padding at the last position for everyone: trimmed away, output unchanged
    full[:, :2] = 1
    y_short = y.clone()
    with torch.no_grad():
        a = model(x, t, y_short, full, info)
        b = model(x, t, torch.cat([y_short[:, :, :-1], torch.zeros_like(y_short[:, :, -1:])], 2), full, info)
    assert torch.allclose(a, b, atol=1e-6)


def test_fresh_model_output_is_zero_and_caption_free():
    """final_layer.linear and every cross_attn.proj are zero-initialised: output 0, blocks ignore the caption."""
    model = PixArtMS(
        input_size=8, hidden_size=48, depth=2, num_heads=3, caption_channels=32, model_max_length=16
    ).eval()
    x, t, y, mask, info = inputs()
    with torch.no_grad():
        assert torch.equal(model(x, t, y, mask, info), torch.zeros(3, 8, 8, 12))
        torch.nn.init.normal_(model.final_layer.linear.weight)
        a = model(x, t, y, mask, info)
        b = model(x, t, torch.randn_like(y), torch.ones_like(mask), info)
    assert a.abs().max() > 0 and torch.allclose(a, b, atol=1e-6)


OFFICIAL_BLOCK_SHAPES = {
    "scale_shift_table": (6, 1152),
    "attn.qkv.weight": (3456, 1152),
    "attn.qkv.bias": (3456,),
    "attn.proj.weight": (1152, 1152),
    "attn.proj.bias": (1152,),
    "cross_attn.q_linear.weight": (1152, 1152),
    "cross_attn.q_linear.bias": (1152,),
    "cross_attn.kv_linear.weight": (2304, 1152),
    "cross_attn.kv_linear.bias": (2304,),
    "cross_attn.proj.weight": (1152, 1152),
    "cross_attn.proj.bias": (1152,),
    "mlp.fc1.weight": (4608, 1152),
    "mlp.fc1.bias": (4608,),
    "mlp.fc2.weight": (1152, 4608),
    "mlp.fc2.bias": (1152,),
}
OFFICIAL_SHAPES = {
    "x_embedder.proj.weight": (1152, 4, 2, 2),
    "x_embedder.proj.bias": (1152,),
    "t_embedder.mlp.0.weight": (1152, 256),
    "t_embedder.mlp.0.bias": (1152,),
    "t_embedder.mlp.2.weight": (1152, 1152),
    "t_embedder.mlp.2.bias": (1152,),
    "t_block.1.weight": (6912, 1152),
    "t_block.1.bias": (6912,),
    "y_embedder.y_embedding": (120, 4096),
    "y_embedder.y_proj.fc1.weight": (1152, 4096),
    "y_embedder.y_proj.fc1.bias": (1152,),
    "y_embedder.y_proj.fc2.weight": (1152, 1152),
    "y_embedder.y_proj.fc2.bias": (1152,),
    "final_layer.scale_shift_table": (2, 1152),
    "final_layer.linear.weight": (32, 1152),
    "final_layer.linear.bias": (32,),
    **{f"blocks.{i}.{k}": v for i in range(28) for k, v in OFFICIAL_BLOCK_SHAPES.items()},
}
MS_SHAPES = {
    f"{e}.mlp.{i}.{p}": s
    for e in ("csize_embedder", "ar_embedder")
    for i, p, s in [(0, "weight", (384, 256)), (0, "bias", (384,)), (2, "weight", (384, 384)), (2, "bias", (384,))]
}


@pytest.mark.parametrize(
    "factory,expected,params",
    [(PixArt_XL_2, OFFICIAL_SHAPES, 610_856_096), (PixArtMS_XL_2, {**OFFICIAL_SHAPES, **MS_SHAPES}, 611_349_152)],
)
def test_xl_state_dict_matches_official_keys(factory, expected, params):
    with torch.device("meta"):
        model = factory(input_size=128)
    got = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    assert got == expected
    assert sum(p.numel() for p in model.parameters()) == params


def test_load_official_pth_with_pos_embed_and_errors(tmp_path):
    src, dst = tiny(True), tiny(True, random=False)
    state = dict(src.state_dict(), pos_embed=torch.zeros(1, 16, 48))
    torch.save({"state_dict": state, "epoch": 3}, tmp_path / "ckpt.pth")
    load_model_weights(dst, tmp_path / "ckpt.pth")
    assert all(torch.equal(a, b) for a, b in zip(src.state_dict().values(), dst.state_dict().values()))
    torch.save({"state_dict": dict(state, extra_key=torch.zeros(1))}, tmp_path / "bad.pth")
    with pytest.raises(KeyError, match="extra_key"):
        load_model_weights(dst, tmp_path / "bad.pth")
    del state["blocks.1.mlp.fc2.bias"]
    torch.save({"state_dict": state}, tmp_path / "missing.pth")
    with pytest.raises(KeyError, match="blocks.1.mlp.fc2.bias"):
        load_model_weights(dst, tmp_path / "missing.pth")
    (tmp_path / "corrupt.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="corrupt.pth"):
        load_model_weights(dst, tmp_path / "corrupt.pth")


def test_grad_checkpointing_same_output_and_grads():
    a, b = tiny(True), tiny(True, grad_checkpointing=True)
    a.train(), b.train()
    a.y_embedder.uncond_prob = b.y_embedder.uncond_prob = 0.0
    x, t, y, mask, info = inputs()
    la, lb = a(x, t, y, mask, info).square().mean(), b(x, t, y, mask, info).square().mean()
    la.backward(), lb.backward()
    assert torch.allclose(la, lb)
    for (n, pa), pb in zip(a.named_parameters(), b.parameters()):
        assert torch.allclose(pa.grad, pb.grad, atol=1e-6), n


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_close_to_fp32(dtype):
    model = tiny(True)
    x, t, y, mask, info = inputs()
    with torch.no_grad():
        ref = model(x, t, y, mask, info)
        out = model.to(dtype)(x.to(dtype), t, y.to(dtype), mask, info)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            auto = model.float()(x, t, y, mask, info)
    assert out.dtype == dtype and torch.isfinite(out).all()
    scale = ref.abs().max()
    assert (out.float() - ref).abs().max() / scale < 0.05
    assert (auto.float() - ref).abs().max() / scale < 0.05


def test_caption_dropout_uses_null_caption_in_training_only():
    model = tiny(False, class_dropout_prob=1.0)
    x, t, y, mask, info = inputs()
    null = model.y_embedder.null_caption(3)
    with torch.no_grad():
        model.train()
        dropped = model(x, t, y, mask, info)
        model.eval()
        assert torch.allclose(dropped, model(x, t, null, mask, info), atol=1e-6)
        assert not torch.allclose(dropped, model(x, t, y, mask, info), atol=1e-4)


def test_bad_inputs_are_named():
    model = tiny(True)
    x, t, y, mask, info = inputs()
    with pytest.raises(ValueError, match="data_info"):
        model(x, t, y, mask, None)
    with pytest.raises(ValueError, match="img_hw"):
        model(x, t, y, mask, {"img_hw": torch.ones(3, 3), "aspect_ratio": info["aspect_ratio"]})
    with pytest.raises(ValueError, match="caption mask"):
        model(x, t, y, mask[:, :5], info)
    with pytest.raises(ValueError, match="x must be"):
        model(x[:, :3], t, y, mask, info)
    with pytest.raises(ValueError, match="divisible by 3"):
        PixArtMS(hidden_size=64, num_heads=4, depth=1)


def test_registry_builds_configured_sizes():
    model = MODELS.build(dict(type="PixArt_tiny", in_channels=12, hidden_size=64, depth=3))
    assert isinstance(model, PixArt) and len(model.blocks) == 3 and model.out_channels == 24
