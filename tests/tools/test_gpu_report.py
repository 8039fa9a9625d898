"""tools/gpu_report.py --tiny end to end on the CPU: every step runs and lands in one markdown report."""

import pytest

from tests.commands import load_command

command = load_command("tools/gpu_report.py")
main, steps = command.main, command.steps


@pytest.mark.slow  # five subprocesses, each importing torch and diffusers, one compiling: ~2-3 min on two cores
def test_gpu_report_tiny(tmp_path):
    report = main(["--tiny", "--out", str(tmp_path), "--compile", "--cuda-graphs"]).read_text()
    # parity, benchmark_model, benchmark_speed, benchmark_speed --compile, benchmark_memory, simulated vs measured
    assert report.count("— ok,") == 6, report
    assert "diffusers / ours" in report and "peak RSS" in report and "fwd ratio" in report
    assert "ours, compiled blocks" in report and "first call (compiles)" in report
    assert "CUDA graphs skipped" in report  # --tiny is the CPU
    assert (tmp_path / "speed.json").is_file() and (tmp_path / "memory.json").is_file()
    # the simulation of the same rows beside the measured peak, which a CPU run does not have
    assert "Memory: simulated (no GPU) vs measured" in report and "memory_simulated.json` — ok" in report
    assert report.count("n/a on a CPU (peak RSS above start") == 2, report


def test_gpu_plan_covers_every_measurement(tmp_path):
    class Args:
        out, tiny, compile, cuda_graphs = str(tmp_path), False, True, True

    titles = " ".join(title for title, _, _ in steps(Args()))
    for name in ("Parity", "eager", "torch.compile", "Table 2", "compile and cuda-graphs", "memory"):
        assert name in titles
    assert sum(limit for _, _, limit in steps(Args())) <= 8 * 60  # the GPU run fits in 8 minutes
