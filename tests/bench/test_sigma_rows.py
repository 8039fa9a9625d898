"""The PixArt-Sigma memory rows (issue 18 item 6): at full size they build what the Σ configs say (checked on the
meta device: no memory), at tiny size they run through the same machinery as the α rows (the tool's child, the
simulation, which matches a real CPU run of the same code), and the simulated-vs-measured report reads both."""

import json

import pytest
import torch
from mmengine.config import Config

from diffusion.bench.memory import GB, compare_markdown
from diffusion.bench.memory_rows import ROWS, build_row_train, row_batch, row_size
from diffusion.bench.sigma_rows import MODELS, sigma_pixart
from diffusion.bench.simulate import simulate_row
from tests.commands import load_command

main = load_command("tools/benchmark_memory.py").main
SIGMA_ROWS = [row for row, r in ROWS.items() if r.sigma]


def test_every_sigma_model_has_a_training_and_an_inference_row():
    assert {(r.sigma, r.kind) for r in ROWS.values() if r.sigma} == {(m, k) for m in MODELS for k in ("lcm", "infer")}


def test_full_size_rows_follow_the_sigma_configs():
    lcm = Config.fromfile("configs/lcm/pixart_sigma_xl2_img1024_lcm.py")
    kv = Config.fromfile("configs/pixart/pixart_sigma_xl2_img1024_ms_kvcompress.py").model.kv_compress_config
    big = Config.fromfile("configs/pixart/pixart_sigma_xl2_img2k_ms.py")
    assert row_batch("sigma-lcm-bf16", "full") == row_batch("sigma-kv-lcm-bf16", "full") == lcm.train.batch_size == 12
    assert row_batch("sigma2k-lcm-bf16", "full") == big.train.batch_size == 4
    assert row_batch("sigma2k-infer-bf16", "full") == 1 and row_batch("sigma2k-lcm-bf16", "tiny") == 2
    expected = {"1024": (lcm.model, None), "1024-kv": (lcm.model, kv), "2k": (big.model, None)}
    for name, (model_cfg, kv_cfg) in expected.items():
        size = row_size(f"sigma{'2k' if name == '2k' else '-kv' if 'kv' in name else ''}-lcm-bf16", "full")
        with torch.device("meta"):
            net = sigma_pixart(name, size)
        assert type(net).__name__ == "PixArtMS" and net.model_max_length == 300 and net.caption_channels == 4096
        assert (net.input_size, net.pe_interpolation) == (model_cfg.input_size, model_cfg.pe_interpolation)
        assert (len(net.blocks), net.hidden_size) == (28, 1152)
        compressed = [i for i, b in enumerate(net.blocks) if hasattr(b.attn, "sr")]
        assert compressed == (list(kv_cfg.kv_compress_layer) if kv_cfg else [])


def test_tiny_sigma_lcm_step_holds_what_the_config_says():
    s = build_row_train("sigma-kv-lcm-bf16", "tiny", "cpu", fused=False)
    assert type(s.optimizer).__name__ == "CAME" and s.amp == torch.bfloat16 and not s.scaler.is_enabled()
    teacher, target = s.method.frozen_networks()
    assert next(teacher.parameters()).dtype == torch.bfloat16 and next(target.parameters()).dtype == torch.float32
    assert tuple(s.batch["y"].shape[:3]) == (2, 1, 300) and s.batch["x0"].shape[-1] == 8
    assert [i for i, b in enumerate(s.model.blocks) if hasattr(b.attn, "sr")] == [1]  # the last half of 2 blocks
    big = build_row_train("sigma2k-lcm-bf16", "tiny", "cpu", fused=False)
    assert big.batch["x0"].shape[-1] == 2 * s.batch["x0"].shape[-1]  # 2K: 4x the tokens


@pytest.mark.parametrize("row", ["sigma-lcm-bf16", "sigma2k-infer-bf16"])
def test_sigma_row_tiny(row):
    r = main(["--child", row, "--size", "tiny", "--device", "cpu"])
    assert r["weights"] > 0 and r["peak"] > 0 and r["batch"] == row_batch(row, "tiny")
    assert r["resolution"] == (128 if row.startswith("sigma2k") else 64)
    if ROWS[row].kind == "lcm":
        # fp32 student + bf16 teacher + fp32 target: 2.5 student parameters, plus buffers; CAME's full-size first
        # moment and factored second moments: more than one gradient, less than AdamW's two
        assert r["weights"] > 2.5 * r["grads"] and r["grads"] < r["optimizer"] < 1.5 * r["grads"]
        assert r["loss"] == r["loss"]


@pytest.mark.parametrize("row", ["sigma-kv-lcm-bf16", "sigma2k-infer-bf16"])
def test_sigma_simulation_matches_a_real_cpu_run(row):
    real = simulate_row(row, "tiny", target="cpu", fake=False)
    simulated = simulate_row(row, "tiny", target="cpu")
    assert "error" not in real and "error" not in simulated, (real, simulated)
    assert simulated["peak"] == pytest.approx(real["peak"], rel=0.02)
    assert simulated["weights"] == real["weights"] and simulated["optimizer"] == real["optimizer"]
    assert (simulated["batch"], simulated["resolution"]) == (real["batch"], real["resolution"])


def result(machine: str, peaks: dict) -> dict:
    rows = {k: dict(peak=v * GB, batch=2, resolution=64) for k, v in peaks.items() if not isinstance(v, str)}
    rows.update({k: {"error": v} for k, v in peaks.items() if isinstance(v, str)})
    return dict(machine=machine, size="tiny", rows=rows)


def test_simulated_beside_measured(tmp_path):
    peaks = {"lcm-bf16": 2.0, "infer-bf16": 1.0, "teacher-bf16": 3.0}
    simulated = result("simulated CUDA on fake tensors (CPU)", peaks)
    gpu = result("NVIDIA H100 80GB HBM3 (torch 2.14)", {"lcm-bf16": 2.2, "infer-bf16": "ran past 60 s"})
    table = compare_markdown(simulated, gpu)
    assert "| lcm-bf16 | 2 × 64² | 2.00 | 2.20 | 1.100 |" in table
    assert "not measured: ran past 60 s" in table
    assert "| teacher-bf16 | 2 × 64² | 3.00 | not measured: not run | — |" in table
    cpu = compare_markdown(simulated, result("CPU, 2 threads (torch 2.14)", {"lcm-bf16": 0.5}))
    assert "| lcm-bf16 | 2 × 64² | 2.00 | n/a on a CPU (peak RSS above start: 0.50) | — |" in cpu
    files = []
    for name, r in (("sim", simulated), ("gpu", gpu)):
        files.append(tmp_path / f"{name}.json")
        files[-1].write_text(json.dumps(r))
    assert main(["--compare", *map(str, files)])["measured"] == gpu
