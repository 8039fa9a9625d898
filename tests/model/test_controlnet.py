"""PixArt-delta ControlNet-Transformer / ControlNet-UNet (diffusion/model/controlnet.py): zero-init identity, parity
with an independent literal port of the official ControlPixArtHalf loop, the official state-dict layout, loading,
frozen base, gradients and gradient checkpointing."""

import copy

import pytest
import torch

from diffusion.model import PixArt_XL_2, PixArtMS_XL_2
from diffusion.model.controlnet import PixArtControlNet, PixArtControlNetUNet, wrap_controlnet
from diffusion.registry import MODELS
from tests.model.helpers import inputs, randomize, tiny
from tests.model.test_pixart import OFFICIAL_BLOCK_SHAPES, OFFICIAL_SHAPES


def _tiny_base(ms: bool = True, depth: int = 4, **kw):
    return tiny(ms, depth=depth, **kw)


def _randomize_projections(cn, seed: int = 5):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for block in cn.controlnet:
            for proj in (block.before_proj, block.after_proj):
                if proj is not None:
                    proj.weight.copy_(torch.randn(proj.weight.shape, generator=g) * 0.2)
                    proj.bias.copy_(torch.randn(proj.bias.shape, generator=g) * 0.2)
            for p in block.copied_block.parameters():  # copies drift away from the base blocks they started as
                p.add_(torch.randn(p.shape, generator=g) * 0.05)
    return cn


def _reference(cn, x, t, y, mask, info, c, unet: bool):
    """Official ControlPixArtHalf.forward (and the UNet variant), written out from the base's own pieces."""
    base = cn.base_model
    tokens, tt, t0, yt, am = base.embed(x, t, y, mask, info)
    h, w = x.shape[-2] // base.patch_size, x.shape[-1] // base.patch_size
    cc = base.x_embedder(c) + base.pos_embed(h, w, tokens)
    cc = cc.expand_as(tokens)
    blocks, n = base.blocks, cn.copy_blocks
    if not unet:
        tokens = blocks[0](tokens, yt, t0, am)
        for index in range(1, n + 1):
            ctl = cn.controlnet[index - 1]
            inp = tokens + ctl.before_proj(cc) if index == 1 else cc
            cc = ctl.copied_block(inp, yt, t0, am)
            tokens = blocks[index](tokens + ctl.after_proj(cc), yt, t0, am)
        for index in range(n + 1, len(blocks)):
            tokens = blocks[index](tokens, yt, t0, am)
    else:
        skips = []
        for i in range(n):
            ctl = cn.controlnet[i]
            cc = ctl.copied_block(tokens + ctl.before_proj(cc) if i == 0 else cc, yt, t0, am)
            skips.append(ctl.after_proj(cc))
        for index in range(len(blocks)):
            mirrored = len(blocks) - 1 - index
            if mirrored < n:
                tokens = tokens + skips[mirrored]
            tokens = blocks[index](tokens, yt, t0, am)
    return base.head(tokens, tt, x.shape[-2], x.shape[-1])


@pytest.mark.parametrize("ms", [False, True])
@pytest.mark.parametrize("cls, n", [(PixArtControlNet, 1), (PixArtControlNet, 3), (PixArtControlNetUNet, 2)])
def test_fresh_controlnet_equals_base_bit_for_bit(ms, cls, n):
    base = _tiny_base(ms)
    cn = cls(copy.deepcopy(base), copy_blocks=n).eval()
    x, t, y, mask, info = inputs()
    c = torch.randn_like(x) * 3
    with torch.no_grad():
        ref = base(x, t, y, mask, info)
        assert torch.equal(cn(x, t, y, mask, info), ref)  # c=None: the base alone
        assert torch.equal(cn(x, t, y, mask, info, c=c), ref)  # zero projections: any control is a no-op


@pytest.mark.parametrize("ms", [False, True])
@pytest.mark.parametrize(
    "cls, n, unet", [(PixArtControlNet, 1, False), (PixArtControlNet, 3, False), (PixArtControlNetUNet, 2, True)]
)
def test_forward_matches_official_loop(ms, cls, n, unet):
    cn = _randomize_projections(cls(_tiny_base(ms), copy_blocks=n).eval())
    x, t, y, mask, info = inputs()
    c = torch.randn_like(x)
    with torch.no_grad():
        out = cn(x, t, y, mask, info, c=c)
        torch.testing.assert_close(out, _reference(cn, x, t, y, mask, info, c, unet), rtol=0, atol=1e-6)
        assert (out - cn.base_model(x, t, y, mask, info)).abs().max() > 1e-3  # the control does something
        # a batch-1 control broadcasts over the batch
        torch.testing.assert_close(cn(x, t, y, mask, info, c=c[:1]), cn(x, t, y, mask, info, c=c[:1].expand_as(c)))


def test_copy_blocks_range_and_bad_control():
    base = _tiny_base(depth=4)
    for bad in (0, 4):
        with pytest.raises(ValueError, match="copy_blocks"):
            PixArtControlNet(copy.deepcopy(base), copy_blocks=bad)
    with pytest.raises(ValueError, match="copy_blocks"):
        PixArtControlNetUNet(copy.deepcopy(base), copy_blocks=3)
    assert PixArtControlNetUNet(copy.deepcopy(base)).copy_blocks == 2
    with pytest.raises(ValueError, match="topology"):
        wrap_controlnet(copy.deepcopy(base), "resnet")
    cn = PixArtControlNet(base, copy_blocks=3)
    x, t, y, mask, info = inputs()
    with pytest.raises(ValueError, match="control c must be"):
        cn(x, t, y, mask, info, c=torch.randn(3, 4, 4, 4))
    with pytest.raises(ValueError, match="batch"):
        cn(x, t, y, mask, info, c=torch.randn(2, *x.shape[1:]))


CONTROL_SHAPES_XL = {
    **{f"controlnet.{i}.copied_block.{k}": v for i in range(13) for k, v in OFFICIAL_BLOCK_SHAPES.items()},
    **{
        f"controlnet.{i}.after_proj.{p}": s
        for i in range(13)
        for p, s in (("weight", (1152, 1152)), ("bias", (1152,)))
    },
    "controlnet.0.before_proj.weight": (1152, 1152),
    "controlnet.0.before_proj.bias": (1152,),
}


@pytest.mark.parametrize("factory", [PixArt_XL_2, PixArtMS_XL_2])
def test_xl_n13_official_layout_and_trainable_count(factory):
    with torch.device("meta"):
        cn = MODELS.build(dict(type="PixArtControlNet", base_model=factory(input_size=128), copy_blocks=13))
    got = {k: tuple(v.shape) for k, v in cn.state_dict().items()}
    base_keys = {f"base_model.{k}": v for k, v in OFFICIAL_SHAPES.items()}
    control = {k: v for k, v in got.items() if k.startswith("controlnet.")}
    assert control == CONTROL_SHAPES_XL
    assert base_keys.items() <= got.items()
    assert all(k.startswith(("base_model.", "controlnet.")) for k in got)
    assert sum(p.numel() for p in cn.parameters() if p.requires_grad) == 294_917_760
    assert not any(p.requires_grad for p in cn.base_model.parameters())


def test_official_layout_round_trip_strict(tmp_path):
    """One way to load weights (issue 21.5): ``load_model_weights`` on a ControlNet loads the official full file
    through the ControlNet path (it said "has no 'y_embedder.y_embedding'": the key is base_model.*'s)."""
    from diffusion.model.io import load_model_weights

    cn = _randomize_projections(PixArtControlNet(_tiny_base(), copy_blocks=2))
    state = cn.state_dict()
    # the official file also stores the position table, which is recomputed here
    official = {**state, "base_model.pos_embed": torch.zeros(1, 16, 48)}
    torch.save({"state_dict": official}, tmp_path / "cn.pth")
    fresh = PixArtControlNet(tiny(True, depth=4, std=0.3), copy_blocks=2)  # other weights everywhere
    load_model_weights(fresh, tmp_path / "cn.pth")
    for k, v in fresh.state_dict().items():
        assert torch.equal(v, state[k]), k
    del official["controlnet.1.after_proj.bias"]
    torch.save({"state_dict": official}, tmp_path / "broken.pth")
    with pytest.raises(KeyError, match="broken.pth.*controlnet.1.after_proj.bias"):
        load_model_weights(fresh, tmp_path / "broken.pth")


def test_plain_base_checkpoint_fills_base_and_reinitialises_copies():
    cn = _randomize_projections(PixArtControlNet(_tiny_base(), copy_blocks=3))
    other = randomize(tiny(True, depth=4, random=False), seed=9)
    cn.load_state_dict({**other.state_dict(), "pos_embed": torch.zeros(1)})
    for name, v in other.state_dict().items():
        assert torch.equal(cn.base_model.state_dict()[name], v), name
    for i, block in enumerate(cn.controlnet):
        for name, v in other.blocks[i].state_dict().items():
            assert torch.equal(block.copied_block.state_dict()[name], v), (i, name)
        assert not block.after_proj.weight.any() and not block.after_proj.bias.any()
    assert not cn.controlnet[0].before_proj.weight.any()


def test_trainable_state_dict_loads_alone_and_strictly():
    cn = _randomize_projections(PixArtControlNet(_tiny_base(), copy_blocks=2))
    part = cn.trainable_state_dict()
    assert part and all(k.startswith("controlnet.") for k in part)
    assert sum(v.numel() for v in part.values()) == sum(p.numel() for p in cn.parameters() if p.requires_grad)
    fresh = PixArtControlNet(_tiny_base(), copy_blocks=2)
    base_before = copy.deepcopy(fresh.base_model.state_dict())
    fresh.load_state_dict(part)
    assert all(torch.equal(fresh.state_dict()[k], v) for k, v in part.items())
    assert all(torch.equal(fresh.base_model.state_dict()[k], v) for k, v in base_before.items())
    part.pop("controlnet.0.before_proj.weight")
    with pytest.raises(KeyError, match="controlnet.0.before_proj.weight"):
        fresh.load_state_dict(part)


def test_base_frozen_in_eval_and_only_copies_train():
    cn = PixArtControlNet(_tiny_base(class_dropout_prob=0.0), copy_blocks=2).train()
    assert cn.training and not cn.base_model.training and not any(m.training for m in cn.base_model.modules())
    assert all(m.training for m in cn.controlnet.modules())
    base_before = copy.deepcopy(cn.base_model.state_dict())
    params = [p for p in cn.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-2, weight_decay=3e-2)
    x, t, y, mask, info = inputs()
    c = torch.randn_like(x)
    copy0 = cn.controlnet[0].copied_block.attn.qkv.weight.detach().clone()
    for _ in range(2):  # step 1 moves the zero projections, step 2 reaches the copies behind them
        opt.zero_grad()
        cn(x, t, y, mask, info, c=c).square().mean().backward()
        assert all(p.grad is None for p in cn.base_model.parameters())
        assert all(p.grad is not None for p in params)
        opt.step()
    assert cn.controlnet[1].after_proj.weight.abs().max() > 0
    assert not torch.equal(cn.controlnet[0].copied_block.attn.qkv.weight, copy0)
    for k, v in cn.base_model.state_dict().items():
        assert torch.equal(v, base_before[k]), k


def test_caption_dropout_is_applied_by_the_wrapper_in_training():
    cn = _randomize_projections(PixArtControlNet(_tiny_base(class_dropout_prob=1.0, drop_path=0.0), copy_blocks=2))
    x, t, y, mask, info = inputs()
    c = torch.randn_like(x)
    null = cn.y_embedder.null_caption(x.shape[0])
    with torch.no_grad():
        dropped = cn.train()(x, t, y, mask, info, c=c)
        expected = cn.eval()(x, t, null, mask, info, c=c)
        kept = cn.eval()(x, t, y, mask, info, c=c)
    torch.testing.assert_close(dropped, expected, rtol=0, atol=1e-6)
    assert (dropped - kept).abs().max() > 1e-4


@pytest.mark.parametrize("cls", [PixArtControlNet, PixArtControlNetUNet])
def test_gradient_checkpointing_covers_copies_and_base_blocks(cls, monkeypatch):
    import diffusion.model.controlnet as controlnet_module

    x, t, y, mask, info = inputs()
    c = torch.randn_like(x)
    grads, wrapped = [], []
    real = controlnet_module.checkpoint
    monkeypatch.setattr(controlnet_module, "checkpoint", lambda m, *a, **k: wrapped.append(m) or real(m, *a, **k))
    for flag in (False, True):
        cn = _randomize_projections(cls(_tiny_base(grad_checkpointing=flag, class_dropout_prob=0.0), copy_blocks=2))
        wrapped.clear()
        cn.train()(x, t, y, mask, info, c=c).square().mean().backward()
        grads.append([p.grad for p in cn.parameters() if p.requires_grad])
        if flag:
            assert all(any(m is block for m in wrapped) for block in cn.controlnet)
            assert all(any(m is block for m in wrapped) for block in cn.base_model.blocks)
        else:
            assert not wrapped
    for a, b in zip(*grads, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-7)
