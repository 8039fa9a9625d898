"""diffusion.bench.roofline: FLOPs of a tiny PixArt counted on fake tensors against a hand count, the bytes model,
the lower bound per GPU, and the ``--roofline`` JSON shape."""

import pytest
import torch

from diffusion.bench.gpus import get_gpu
from diffusion.bench.roofline import ROWS, count, lower_bounds, roofline, roofline_markdown
from diffusion.bench.simulate import simulation
from diffusion.model.pixart import PixArt

B, SIDE, P, C_IN, D, HEADS, DEPTH, C_Y, L = 2, 8, 2, 4, 48, 2, 2, 32, 6
N = (SIDE // P) ** 2  # 16 tokens


def hand_count() -> dict[str, int]:
    """FLOPs (2 per multiply-add) of the matmuls of one forward: (B, 4, 8, 8) latents, 6 caption tokens."""
    per_block = {
        "qkv": 2 * B * N * D * 3 * D,
        "self_attention": 2 * (2 * B * N * N * D),  # q k^T and attention @ v over all heads
        "self_proj": 2 * B * N * D * D,
        "cross_q": 2 * B * N * D * D,
        "cross_attention": 2 * (2 * B * N * L * D),
        "cross_proj": 2 * B * N * D * D,
        "mlp": 2 * (2 * B * N * D * 4 * D),  # fc1 D -> 4D, fc2 4D -> D
    }
    once = {
        "patch_embed": 2 * B * N * (C_IN * P * P) * D,
        "t_embedder": 2 * B * (256 * D + D * D),
        "t_block": 2 * B * D * 6 * D,
        "final_layer": 2 * B * N * D * (P * P * 2 * C_IN),  # learned sigma: 2 x 4 output channels
    }
    caption = {"y_proj": 2 * B * L * (C_Y * D + D * D), "cross_kv": DEPTH * 2 * B * L * D * 2 * D}
    return dict(step=DEPTH * sum(per_block.values()) + sum(once.values()), caption=sum(caption.values()))


def test_flops_of_a_tiny_pixart_match_the_hand_count():
    expected = hand_count()
    with simulation("cuda", "cuda"), torch.no_grad():
        torch.manual_seed(0)
        model = PixArt(
            input_size=SIDE, patch_size=P, in_channels=C_IN, hidden_size=D, depth=DEPTH, num_heads=HEADS,
            caption_channels=C_Y, model_max_length=L,
        ).to("cuda").eval()  # fmt: skip
        x = torch.randn(B, C_IN, SIDE, SIDE, device="cuda")
        t = torch.full((B,), 500, device="cuda")
        y = torch.randn(B, 1, L, C_Y, device="cuda")
        full = count(lambda: model(x, t, y, None), [model])
        caption = count(lambda: model.encode_caption(y, None), [model])
        encoded = model.encode_caption(y, None)
        step = count(lambda: model(x, t, None, None, caption=encoded), [model])
    assert step["flops"] == expected["step"]
    assert caption["flops"] == expected["caption"]
    assert full["flops"] == expected["step"] + expected["caption"]
    params = sum(p.numel() * 4 for p in model.parameters())
    assert full["weights"] == params  # every weight read once in a full forward
    assert full["bytes"] == full["weights"] + 2 * full["created"] > full["weights"]


def test_lower_bound_is_the_slower_of_compute_and_memory():
    stages = {
        "text_encode": dict(flops=10**12, bytes=10**10),  # memory-bound everywhere
        "caption_kv": dict(flops=0, bytes=0),
        "transformer_step": dict(flops=10**13, bytes=10**9),  # compute-bound
        "transformer_step_cfg": dict(flops=2 * 10**13, bytes=2 * 10**9),
        "vae_decode": dict(flops=10**13, bytes=10**10),
    }
    bounds = lower_bounds(stages, ["A100-80GB"])["A100-80GB"]
    gpu = get_gpu("A100-80GB")
    assert bounds["stages"]["text_encode"] == pytest.approx(1e10 / gpu.bandwidth)
    assert bounds["stages"]["transformer_step"] == pytest.approx(1e13 / gpu.peak_flops)
    s = bounds["stages"]
    assert bounds["rows"]["lcm4"] == pytest.approx(s["text_encode"] + 4 * s["transformer_step"] + s["vae_decode"])
    assert bounds["rows"]["dpm14"] == pytest.approx(
        s["text_encode"] + 14 * s["transformer_step_cfg"] + s["vae_decode"]
    )


def test_roofline_json_per_image_stage():
    result = roofline("tiny")
    assert {"text_encode", "transformer_step", "vae_decode"} <= result["flops"].keys()
    assert all(v > 0 for v in result["flops"].values()) and all(v > 0 for v in result["bytes"].values())
    assert result["flops"]["transformer_step_cfg"] == 2 * result["flops"]["transformer_step"]
    assert result["flops"]["text_encode_300"] > result["flops"]["text_encode"]
    h100 = result["lower_bound_s"]["H100-80GB"]["rows"]
    assert set(h100) == set(ROWS) and h100["dpm20"] > h100["dpm14"] > h100["lcm4"] > 0
    measured = {"machine": "CPU, 2 threads", "times": {"lcm4": {"ours": {"total": 1.25}}}}  # benchmark_speed --json
    text = roofline_markdown(result, measured)
    assert "1.250 (CPU, 2 threads)" in text and "0.5 / 0.8 / 3.3" in text and "lower bound" in text
