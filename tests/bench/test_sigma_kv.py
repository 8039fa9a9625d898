"""diffusion/bench/sigma_kv.py and ``tools/benchmark_speed.py --sigma-kv`` at tiny size: the two models hold the same
weights (the uncompressed one is the compressed one without ``sr`` / ``norm``), only the last half of the blocks
compresses, and every row is timed (a smoke test: no timing asserts)."""

import torch

from diffusion.bench.sigma_kv import SIZES, kv_pair, step_inputs
from diffusion.paths import repo_path
from tests.commands import load_command

main = load_command("tools/benchmark_speed.py").main


def test_kv_pair_shares_the_weights_and_compresses_the_last_half():
    compressed, plain = kv_pair(SIZES["tiny"])
    extra = sorted(compressed.state_dict().keys() - plain.state_dict().keys())
    assert extra == [f"blocks.1.attn.{m}.{p}" for m in ("norm", "sr") for p in ("bias", "weight")]
    assert all(torch.equal(v, compressed.state_dict()[k]) for k, v in plain.state_dict().items())
    assert [b.attn.sr_ratio for b in compressed.blocks] == [1, 2] and plain.kv_compress_config is None
    assert plain.model_max_length == 300 and not plain.use_micro_conditions
    inputs = step_inputs(plain, 64, batch=1, device="cpu", dtype=torch.float32)
    with torch.no_grad():
        a, b = plain(*inputs), compressed(*inputs)
    assert a.shape == b.shape == (1, 8, 8, 8) and not torch.allclose(a, b)  # block 1 attends to pooled K/V


def test_benchmark_speed_sigma_kv_tiny(tmp_path, capsys):
    result = main(["--sigma-kv", "--size", "tiny", "--runs", "1", "--sigma-resolutions", "128", "256"])
    assert set(result["rows"]) == {128, 256} and result["rows"][256]["tokens"] == 256
    assert all(row["uncompressed"] > 0 and row["compressed"] > 0 for row in result["rows"].values())
    out = capsys.readouterr().out
    assert "| 256² | 256 |" in out and "Compression pays" in out and "load average" in out


def test_benchmark_speed_takes_a_sigma_config(capsys):
    """The Table-2 rows on a Σ config: 300-token captions, diffusers' PixArtSigmaPipeline on the same weights."""
    sigma_lcm = str(repo_path("configs/lcm/pixart_sigma_xl2_img1024_lcm.py"))
    result = main(["--size", "tiny", "--runs", "1", "--rows", "lcm4", "--config", sigma_lcm])
    assert result["latent_diff"]["lcm4"] < 1e-4  # same weights, same sampler -> same latents
    assert all(t > 0 for t in result["times"]["lcm4"]["diffusers"].values())
