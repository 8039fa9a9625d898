"""tools/benchmark_model.py --lcd at tiny size: one LCD training step of ours against the official script's step on
diffusers' transformer, both precisions timed, both sides' step-1 losses equal (a smoke test: no timing asserts)."""

import pytest

from tests.commands import load_command

main = load_command("tools/benchmark_model.py").main
TINY = ["--lcd", "--size", "tiny", "--resolution", "64", "--warmup", "0", "--repeats", "1"]


def test_benchmark_model_lcd_tiny(capsys):
    results = main(TINY)
    assert set(results) == {"fp32", "bf16"}
    assert results["fp32"].loss_rel_diff < 1e-5  # the same computation on both sides
    assert results["bf16"].loss_rel_diff < 0.05
    out = capsys.readouterr().out
    assert "ratio (reference / ours)" in out and "| fp32 |" in out and "| bf16 |" in out


def test_benchmark_model_lcd_refuses():
    with pytest.raises(SystemExit):
        main([*TINY, "--ms"])
    with pytest.raises(SystemExit):
        main([*TINY, "--precisions", "fp16"])
