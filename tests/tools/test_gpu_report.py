"""tools/gpu_report.py --tiny end to end on the CPU: every step runs and lands in one markdown report."""

import pytest

from tools.gpu_report import main, steps


@pytest.mark.slow  # four subprocesses, each importing torch and diffusers: ~1-2 min on two cores
def test_gpu_report_tiny(tmp_path):
    report = main(["--tiny", "--out", str(tmp_path)]).read_text()
    assert report.count("— ok,") == 4, report  # parity, benchmark_model, benchmark_speed, benchmark_memory
    assert "diffusers / ours" in report and "peak RSS" in report and "fwd ratio" in report
    assert (tmp_path / "speed.json").is_file() and (tmp_path / "memory.json").is_file()


def test_gpu_plan_covers_every_measurement(tmp_path):
    class Args:
        out, tiny = str(tmp_path), False

    titles = " ".join(title for title, _, _ in steps(Args()))
    for name in ("Parity", "eager", "torch.compile", "Table 2", "memory"):
        assert name in titles
    assert sum(limit for _, _, limit in steps(Args())) <= 8 * 60  # the GPU run fits in 8 minutes
