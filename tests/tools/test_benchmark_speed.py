"""tools/benchmark_speed.py at tiny size: every row and stage is timed for ours and diffusers, the latents of the two
pipelines agree, and the markdown carries the paper's numbers (a smoke test: no timing asserts); ``--compile`` adds
our pipeline with compiled blocks, its first call timed apart; ``--cuda-graphs`` refuses a CPU."""

import pytest

from diffusion.model.compile import cpp_compiler_missing
from tests.commands import load_command

command = load_command("tools/benchmark_speed.py")
PAPER, main, parse_args = command.PAPER, command.main, command.parse_args


def test_benchmark_speed_tiny(tmp_path, capsys):
    result = main(["--size", "tiny", "--runs", "1", "--rows", "lcm4", "dpm14", "--json", str(tmp_path / "r.json")])
    assert set(result["times"]) == {"lcm4", "dpm14"}
    for impls in result["times"].values():
        assert all(t > 0 for impl in impls.values() for t in impl.values())
    assert all(d < 1e-4 for d in result["latent_diff"].values())  # same weights, same sampler -> same latents
    out = capsys.readouterr().out
    assert PAPER["lcm4"] in out and "diffusers / ours" in out and "tiny:" in out
    assert (tmp_path / "r.json").is_file()


def test_benchmark_caption_reuse_tiny():
    reuse_main = load_command("tools/benchmark_caption_reuse.py").main

    result = reuse_main(["--size", "tiny", "--runs", "1", "--precisions", "fp32"])
    assert result["fp32"]["diff"] < 1e-5  # the cached path computes the same output


@pytest.mark.slow  # compiles one tiny block with inductor: ~20-60 s on two shared cores
@pytest.mark.skipif(cpp_compiler_missing() is not None, reason="no C++ compiler for inductor")
def test_benchmark_speed_compile_tiny(capsys):
    result = main(["--size", "tiny", "--runs", "1", "--rows", "lcm4", "--compile"])
    compiled = result["variants"]["lcm4"]["ours, compiled blocks"]
    assert compiled["first_call"] > 0 and compiled["latent_diff"] < 1e-4  # the compiled blocks hold the latents
    assert set(result["times"]["lcm4"]["ours, compiled blocks"]) == {"steps", "total"}
    assert "first call (compiles)" in capsys.readouterr().out


def test_cuda_graphs_need_cuda():
    with pytest.raises(SystemExit):
        parse_args(["--device", "cpu", "--cuda-graphs"])
