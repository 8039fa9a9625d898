"""tools/reproduce_tables.py: each job's table lands in output/tables/<name>.md stamped with machine, commit and
command; failing and missing tools are reported, not hidden."""

import pytest

from diffusion.experiments.tables import Job, default_jobs
from tests.commands import load_command

main = load_command("tools/reproduce_tables.py").main

TABLE_TOOL = """
import json, sys
print(json.dumps({"progress": 1}))
print("Caption: numbers from " + " ".join(sys.argv[1:]))
print()
print("| a | b |")
print("|---|---|")
print("| 1 | 2 |")
print("[tool] wrote it")
"""


def test_tables_are_stamped_and_failures_reported(tmp_path, capsys):
    (tmp_path / "good.py").write_text(TABLE_TOOL)
    (tmp_path / "bad.py").write_text("print('half a table')\nraise SystemExit(3)\n")
    jobs = [
        Job("good", "A good table", str(tmp_path / "good.py"), ["--x", "1"]),
        Job("bad", "A failing tool", str(tmp_path / "bad.py")),
        Job("gone", "A tool not written yet", str(tmp_path / "missing.py")),
        Job("later", "Skipped on purpose", str(tmp_path / "good.py"), skip="pass --later"),
    ]
    code = main(["--out", str(tmp_path / "tables")], jobs=jobs)
    assert code == 1  # one job failed
    good = (tmp_path / "tables" / "good.md").read_text()
    assert good.startswith("## A good table")
    assert "- machine: " in good and "cores" in good and "- commit: " in good
    assert f"- command: `python {tmp_path / 'good.py'} --x 1`" in good
    assert "Caption: numbers from --x 1\n\n| a | b |\n|---|---|\n| 1 | 2 |\n" in good
    assert "progress" not in good and "[tool] wrote it" not in good
    bad = (tmp_path / "tables" / "bad.md").read_text()
    assert "**FAILED** (exit code 3)" in bad and "half a table" in bad
    index = (tmp_path / "tables" / "index.md").read_text()
    assert "- [good](good.md): ok" in index and "- [bad](bad.md): FAILED" in index
    assert "- gone: skipped (" in index and "missing.py does not exist" in index
    assert "- later: skipped (pass --later)" in index
    assert not (tmp_path / "tables" / "gone.md").exists()


def test_only_selects_and_rejects_unknown_names(tmp_path):
    (tmp_path / "good.py").write_text(TABLE_TOOL)
    jobs = [Job("good", "A", str(tmp_path / "good.py")), Job("other", "B", str(tmp_path / "missing.py"))]
    assert main(["--out", str(tmp_path / "t"), "--only", "good"], jobs=list(jobs)) == 0
    assert "other" not in (tmp_path / "t" / "index.md").read_text()
    with pytest.raises(SystemExit, match="unknown table"):
        main(["--out", str(tmp_path / "t"), "--only", "nope"], jobs=list(jobs))


def test_every_sub_tool_writes_under_out(tmp_path):
    """Before: --out /tmp/x still sent the lcm, sweep and controlnet tools' outputs into output/tables/ in the repo."""
    import argparse

    args = argparse.Namespace(
        student=str(tmp_path / "s.safetensors"), num_images=8, sweep=True, controlnet_steps=2, controlnet_images=2
    )
    jobs = {job.name: job for job in default_jobs(args, tmp_path)}
    for name in ("lcm", "sweep", "controlnet"):
        flags = jobs[name].args
        outputs = [flags[i + 1] for i, flag in enumerate(flags) if flag in ("--out", "--work-root")]
        assert outputs and all(value.startswith(str(tmp_path)) for value in outputs), (name, flags)
    assert "--work-root" in jobs["controlnet"].args
