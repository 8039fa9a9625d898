"""PixArt-Sigma in PixArt / PixArtMS (diffusion/model/attention.py, pixart.py): parity with diffusers'
PixArtTransformer2DModel under a Σ config, the KV-compression invariants against independent references (mean-pool
init, strided slice, nearest interpolation, odd grids, Q never compressed), qk-norm, the official XL key layout, and
what α blocks do kept for Σ blocks (caption K/V reuse, gradient checkpointing, ControlNet copies, LoRA, FSDP)."""

import copy

import pytest
import torch
import torch.nn.functional as F
from diffusers import PixArtTransformer2DModel

from diffusion.methods.lcm_distillation import LORA_TARGETS, add_lora
from diffusion.model import PixArtMS, PixArtSigma_XL_2, PixArtSigmaMS_XL_2
from diffusion.model.attention import SelfAttention, kv_compress_plan
from diffusion.model.compile import blocks_compiled, compile_blocks, cpp_compiler_missing
from diffusion.model.controlnet import PixArtControlNet, PixArtControlNetUNet
from diffusion.model.diffusers_format import diffusers_forward, save_diffusers
from diffusion.registry import MODELS
from tests.model.helpers import KV_CONV, SIGMA_ARCH, randomize, sigma_inputs, tiny_sigma
from tests.model.test_controlnet import _randomize_projections
from tests.model.test_pixart import OFFICIAL_SHAPES


# ----------------------------------------------------------------------------------------------- diffusers parity
@pytest.mark.parametrize("pe_interpolation", [0.5, 2.0])
@pytest.mark.parametrize("hw", [(10, 14), (8, 8)], ids=["5x7", "4x4"])
def test_sigma_matches_diffusers(tmp_path, pe_interpolation, hw):
    model = tiny_sigma(pe_interpolation=pe_interpolation)
    assert model.hidden_size % 3 and not hasattr(model, "csize_embedder")
    save_diffusers(model, tmp_path)
    ref = PixArtTransformer2DModel.from_pretrained(tmp_path).eval()
    assert ref.config.use_additional_conditions is False
    assert ref.config.interpolation_scale == pe_interpolation
    x, t, y, mask = sigma_inputs(hw=hw)
    with torch.no_grad():
        ours = model(x, t, y, mask)  # no data_info: a Σ model has no micro-conditions
        theirs = diffusers_forward(ref, x, t, y, mask)
    assert ours.shape == theirs.shape == (3, 8, *hw)
    assert ours.abs().max() > 0.1
    assert (ours - theirs).abs().max() <= 1e-4


def test_micro_condition_off_ignores_data_info_and_alpha_default_stays():
    model = tiny_sigma()
    x, t, y, mask = sigma_inputs()
    hw_px = torch.tensor([[64.0, 96.0], [10.0, 900.0], [512.0, 512.0]])
    with torch.no_grad():
        plain = model(x, t, y, mask)
        given = model(x, t, y, mask, {"img_hw": hw_px, "aspect_ratio": hw_px[:, :1] / hw_px[:, 1:]})
    assert torch.equal(plain, given) and model.use_micro_conditions is False
    assert PixArtMS(**{**SIGMA_ARCH, "hidden_size": 48, "num_heads": 3}).use_micro_conditions  # α default: on
    with pytest.raises(ValueError, match="divisible by 3.*micro_condition=False"):
        PixArtMS(**SIGMA_ARCH)


# ----------------------------------------------------------------------------------------------- official layout
SIGMA_SHAPES = {**OFFICIAL_SHAPES, "y_embedder.y_embedding": (300, 4096)}
KV_SHAPES = {
    f"blocks.{i}.attn.{k}": s
    for i in range(14, 28)
    for k, s in [
        ("sr.weight", (1152, 1, 2, 2)),
        ("sr.bias", (1152,)),
        ("norm.weight", (1152,)),
        ("norm.bias", (1152,)),
    ]
}
QK_SHAPES = {f"blocks.{i}.attn.{n}_norm.{p}": (1152,) for i in range(28) for n in "qk" for p in ("weight", "bias")}
KV_1024 = dict(sampling="conv", scale_factor=2, kv_compress_layer=list(range(14, 28)))


@pytest.mark.parametrize(
    "factory,kwargs,expected,params",
    [
        (PixArtSigma_XL_2, dict(input_size=32, pe_interpolation=0.5), SIGMA_SHAPES, 610_856_096),
        (PixArtSigmaMS_XL_2, dict(input_size=128, pe_interpolation=2.0), SIGMA_SHAPES, 610_856_096),
        (PixArtSigmaMS_XL_2, dict(input_size=128, kv_compress_config=KV_1024), {**SIGMA_SHAPES, **KV_SHAPES}, None),
        (PixArtSigmaMS_XL_2, dict(input_size=128, qk_norm=True), {**SIGMA_SHAPES, **QK_SHAPES}, None),
    ],
    ids=["256", "1024-MS", "1024-MS-kvcompress", "qk_norm"],
)
def test_xl_sigma_state_dict_is_the_official_layout(factory, kwargs, expected, params):
    with torch.device("meta"):
        model = factory(**kwargs)
    assert {k: tuple(v.shape) for k, v in model.state_dict().items()} == expected
    n = sum(p.numel() for p in model.parameters())
    if params is not None:
        assert n == params  # facts sheet: 610,856,096 (the 2,443,492,488-byte diffusers safetensors)
    elif "kv_compress_config" in kwargs:
        assert n == 610_856_096 + 112_896  # 8,064 per compressed layer x 14


def test_registry_builds_sigma_sizes():
    model = MODELS.build(
        dict(
            type="PixArtSigmaMS_XL_2", depth=1, input_size=64, kv_compress_config=KV_1024 | {"kv_compress_layer": [0]}
        )
    )
    assert model.model_max_length == 300 and not model.use_micro_conditions and model.blocks[0].attn.sr_ratio == 2


@pytest.mark.parametrize(
    "config,error",
    [
        (dict(sampling="conv", scale_factor=2), "missing key.*kv_compress_layer"),
        (dict(KV_CONV, typo=1), "unknown key.*typo"),
        (dict(KV_CONV, sampling="max"), "sampling must be one of"),
        (dict(KV_CONV, scale_factor=1.5), "integer"),
        (dict(KV_CONV, kv_compress_layer=[3]), r"\[3\] are not block indices in \[0, 3\)"),
    ],
)
def test_bad_kv_compress_config_is_named(config, error):
    with pytest.raises((KeyError, ValueError), match=error):
        tiny_sigma(kv_compress_config=config)


def test_kv_compress_plan_per_block():
    plan = kv_compress_plan(dict(sampling="ave", scale_factor=2.0, kv_compress_layer=[0, 2]), 3)
    assert plan == [("ave", 2), (None, 1), ("ave", 2)]
    assert kv_compress_plan(dict(sampling=None, scale_factor=1, kv_compress_layer=[]), 2) == [(None, 1)] * 2
    assert tiny_sigma(kv_compress_config=dict(KV_CONV, scale_factor=1)).kv_compress_config is None


# ----------------------------------------------------------------------------------------------- KV compression
def _attention(sampling: str, sr: int = 2, qk_norm: bool = False, width: int = 40) -> SelfAttention:
    attn = SelfAttention(width, 2, qk_norm=qk_norm, sampling=sampling, sr_ratio=sr)
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for name, p in attn.named_parameters():
            if not name.startswith(("sr.", "norm.")):  # compression weights stay at their init
                p.copy_(torch.randn(p.shape, generator=g) * 0.2)
    return attn


def _grid(b: int, h: int, w: int, d: int = 40) -> torch.Tensor:
    return torch.randn(b, h * w, d, generator=torch.Generator().manual_seed(4))


@pytest.mark.parametrize(("h", "w", "sr"), [(4, 6, 2), (5, 7, 2), (7, 9, 3), (3, 3, 3)])
def test_conv_init_is_mean_pool_then_layernorm(h, w, sr):
    attn = _attention("conv", sr)
    assert torch.equal(attn.sr.weight, torch.full((40, 1, sr, sr), 1.0 / sr**2)) and not attn.sr.bias.any()
    assert torch.equal(attn.norm.weight, torch.ones(40)) and not attn.norm.bias.any() and attn.norm.eps == 1e-5
    tokens = _grid(2, h, w)
    pooled = F.avg_pool2d(tokens.reshape(2, h, w, 40).permute(0, 3, 1, 2), sr)  # floor: drops the remainder
    expected = F.layer_norm(pooled.flatten(2).transpose(1, 2), (40,))
    with torch.no_grad():
        got = attn.compress(tokens, (h, w))
    assert got.shape == (2, (h // sr) * (w // sr), 40)
    assert torch.allclose(got, expected, atol=1e-5)


@pytest.mark.parametrize(("h", "w", "sr"), [(4, 6, 2), (5, 7, 2), (7, 9, 3), (6, 4, 3)])
def test_uniform_is_the_strided_slice_and_ave_the_nearest_interpolation(h, w, sr):
    tokens = _grid(2, h, w)
    grid = tokens.reshape(2, h, w, 40)
    uniform = _attention("uniform", sr).compress(tokens, (h, w))
    ave = _attention("ave", sr).compress(tokens, (h, w))
    oh, ow = h // sr, w // sr
    assert torch.equal(uniform, grid[:, ::sr, ::sr][:, :oh, :ow].reshape(2, oh * ow, 40))
    official_ave = F.interpolate(grid.permute(0, 3, 1, 2), scale_factor=1 / sr, mode="nearest")  # official 'ave'
    assert torch.equal(ave, official_ave.permute(0, 2, 3, 1).reshape(2, -1, 40))
    if h % sr == 0 and w % sr == 0:
        assert torch.equal(uniform, grid[:, ::sr, ::sr].reshape(2, -1, 40))  # the official slice, uncropped


def test_uniform_every_keeps_every_sr_th_token_floor():
    tokens = _grid(1, 5, 7)  # 35 tokens: the official [::2] gives 18 and crashes on reshape to 17
    got = _attention("uniform_every", 2).compress(tokens, (5, 7))
    assert torch.equal(got, tokens[:, ::2][:, :17])


@pytest.mark.parametrize("sampling", ["conv", "ave", "uniform", "uniform_every"])
@pytest.mark.parametrize("qk_norm", [False, True])
def test_compressed_attention_keeps_queries_and_matches_a_reference(sampling, qk_norm):
    attn = _attention(sampling, 2, qk_norm)
    x, hw = _grid(2, 5, 7), (5, 7)
    q, k, v = F.linear(x, attn.qkv.weight, attn.qkv.bias).chunk(3, dim=-1)
    if qk_norm:  # LayerNorm over all 40 channels, before the head split and before the compression
        q = F.layer_norm(q, (40,), attn.q_norm.weight, attn.q_norm.bias)
        k = F.layer_norm(k, (40,), attn.k_norm.weight, attn.k_norm.bias)
    k, v = attn.compress(k, hw), attn.compress(v, hw)
    n_kv = 17 if sampling == "uniform_every" else 2 * 3
    assert k.shape == v.shape == (2, n_kv, 40)

    def heads(a):
        return a.reshape(2, a.shape[1], 2, 20).transpose(1, 2)

    weights = (heads(q) @ heads(k).transpose(-1, -2) / 20**0.5).softmax(-1)  # (B, h, N, N')
    expected = F.linear((weights @ heads(v)).transpose(1, 2).reshape(2, 35, 40), attn.proj.weight, attn.proj.bias)
    with torch.no_grad():
        got = attn(x, hw)
    assert got.shape == x.shape == (2, 35, 40)  # queries never compressed
    assert torch.allclose(got, expected, atol=1e-5)


def test_grid_smaller_than_the_factor_or_unknown_is_an_error():
    attn = _attention("conv", 3)
    with pytest.raises(ValueError, match="at least 3 x 3.*got 2 x 5"):
        attn(_grid(1, 2, 5), (2, 5))
    with pytest.raises(ValueError, match="token grid"):
        attn(_grid(1, 3, 3))


@pytest.mark.parametrize("sampling", ["conv", "ave", "uniform", "uniform_every"])
def test_kv_compressed_model_runs_on_odd_grids(sampling):
    model = tiny_sigma(kv_compress_config=dict(KV_CONV, sampling=sampling))
    for hw in [(10, 14), (14, 10), (6, 6)]:
        x, t, y, mask = sigma_inputs(hw=hw)
        with torch.no_grad():
            out = model(x, t, y, mask)
        assert out.shape == (3, 8, *hw) and torch.isfinite(out).all()


# ----------------------------------------------------------------------------------------------- α features on Σ
SIGMA_OPTIONS = dict(kv_compress_config=KV_CONV, qk_norm=True)


def test_caption_kv_reuse_equals_the_plain_call():
    model = tiny_sigma(**SIGMA_OPTIONS)
    x, t, y, mask = sigma_inputs()
    with torch.no_grad():
        plain = model(x, t, y, mask)
        reused = model(x, t, None, None, caption=model.encode_caption(y, mask))
    assert (plain - reused).abs().max() <= 1e-5


def test_grad_checkpointing_same_output_and_grads():
    a, b = tiny_sigma(**SIGMA_OPTIONS), tiny_sigma(**SIGMA_OPTIONS, grad_checkpointing=True)
    a.train(), b.train()
    a.y_embedder.uncond_prob = b.y_embedder.uncond_prob = 0.0
    x, t, y, mask = sigma_inputs()
    la, lb = a(x, t, y, mask).square().mean(), b(x, t, y, mask).square().mean()
    la.backward(), lb.backward()
    assert torch.allclose(la, lb)
    for (n, pa), pb in zip(a.named_parameters(), b.parameters()):
        assert pa.grad is not None and torch.allclose(pa.grad, pb.grad, atol=1e-6), n
    assert a.blocks[1].attn.sr.weight.grad.abs().sum() > 0  # the compression is trained


@pytest.mark.parametrize("cls", [PixArtControlNet, PixArtControlNetUNet])
def test_controlnet_on_a_sigma_base(cls):
    base = tiny_sigma(qk_norm=True, kv_compress_config=dict(KV_CONV, kv_compress_layer=[0, 2]))
    cn = cls(base, copy_blocks=1).eval()
    copy_attn = cn.controlnet[0].copied_block.attn
    assert copy_attn.sr_ratio == 2 and copy_attn.sampling == "conv" and copy_attn.q_norm is not None
    assert "controlnet.0.copied_block.attn.sr.weight" in cn.state_dict()
    x, t, y, mask = sigma_inputs()
    c = torch.randn_like(x)
    with torch.no_grad():
        assert torch.equal(cn(x, t, y, mask, c=c), base(x, t, y, mask))  # zero-init projections: the base
        _randomize_projections(cn)
        controlled = cn(x, t, y, mask, c=c)
        reused = cn(x, t, None, None, c=c, caption=cn.encode_caption(y, mask))
    assert (controlled - base(x, t, y, mask)).abs().max() > 1e-3
    assert (controlled - reused).abs().max() <= 1e-5


def test_lora_leaves_the_compression_and_qk_norms_frozen_and_unadapted():
    model = tiny_sigma(**SIGMA_OPTIONS)
    add_lora(model, 4, None, LORA_TARGETS)
    adapted = {n.split(".lora_A")[0] for n, _ in model.named_parameters() if ".lora_A" in n}
    assert adapted and not [n for n in adapted if any(k in n for k in ("attn.sr", "attn.norm", "_norm"))]
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n for n in trainable)


def test_fsdp_shards_sigma_blocks_and_keeps_the_output(tmp_path):
    import torch.distributed as dist
    from torch.distributed.device_mesh import init_device_mesh

    from diffusion.engine.parallel import _shard

    ref = tiny_sigma(**SIGMA_OPTIONS)
    model = randomize(tiny_sigma(**SIGMA_OPTIONS, random=False))
    x, t, y, mask = sigma_inputs()
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    try:
        _shard(model, init_device_mesh("cpu", (1,)))
        assert type(model.blocks[1].attn.sr.weight).__name__ == "DTensor"
        out = model(x, t, y, mask)
        out.square().mean().backward()
        assert model.blocks[1].attn.sr.weight.grad is not None
    finally:
        dist.destroy_process_group()
    with torch.no_grad():
        assert (out.detach() - ref(x, t, y, mask)).abs().max() <= 1e-5


@pytest.mark.skipif(cpp_compiler_missing() is not None, reason="no C++ compiler for inductor")
@pytest.mark.slow  # inductor builds C++ kernels for a compressed and an uncompressed block
def test_regional_compile_of_sigma_blocks_holds_the_output():
    model = tiny_sigma(**SIGMA_OPTIONS)
    compiled = copy.deepcopy(model)
    assert compile_blocks(compiled) == 3 and blocks_compiled(compiled)
    x, t, y, mask = sigma_inputs()
    with torch.no_grad():
        assert (compiled(x, t, y, mask) - model(x, t, y, mask)).abs().max() <= 1e-4
