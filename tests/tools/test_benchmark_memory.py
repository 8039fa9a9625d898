"""tools/benchmark_memory.py at tiny size (a smoke test: no size asserts beyond the bookkeeping): the LCM step with
half-precision frozen copies, the teacher step and the int8 inference row run and split their memory; the
subprocess driver records a row that cannot run (here: out of time) instead of failing."""

import pytest

from tools.benchmark_memory import main, markdown


@pytest.mark.parametrize("row", ["lcm-bf16", "teacher-fp16", "controlnet-bf16", "infer-int8-lean"])
def test_memory_row_tiny(row):
    r = main(["--child", row, "--size", "tiny", "--device", "cpu"])
    assert r["weights"] > 0 and r["peak"] > 0
    if row != "infer-int8-lean":
        # AdamW: two fp32 moments per fp32 gradient (plus a scalar step count per parameter)
        assert r["grads"] > 0 and abs(r["optimizer"] - 2 * r["grads"]) < 0.01 * r["grads"]
        assert r["loss"] == r["loss"]  # finite, not NaN


def test_memory_driver_reports_skipped_rows(tmp_path):
    args = ["--size", "tiny", "--device", "cpu", "--rows", "controlnet-bf16", "--row-timeout", "0.5"]
    result = main([*args, "--json", str(tmp_path / "m.json")])  # a child cannot even import torch in 0.5 s
    assert "ran past" in result["rows"]["controlnet-bf16"]["error"]
    assert "skipped" in markdown(result) and (tmp_path / "m.json").is_file()
