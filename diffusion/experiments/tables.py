"""Rebuild every table of the README on this machine (``tools/reproduce_tables.py``): one :class:`Job` per table,
each a command run in the checkout whose markdown table(s) on stdout become ``<out>/<name>.md``, stamped with the
machine, the commit and the exact command.

Contract with the commands: each prints its markdown table(s) on stdout (the ``|`` lines and the text between them are
kept); progress goes to stderr. A failing command is reported in its table file and the index, and the others still
run. Whatever a command writes goes under ``out`` (``OUT/_lcm``, ``OUT/_sweep``, ``OUT/_controlnet``, ...).
"""

from __future__ import annotations

import argparse
import os
import platform
import shlex
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from diffusion.paths import ROOT, repo_path


@dataclass
class Job:
    """One table: ``tool`` (a command's path relative to the checkout, or absolute) run with ``args`` writes
    ``<name>.md``."""

    name: str
    title: str
    tool: str
    args: list[str] = field(default_factory=list)
    skip: str | None = None  # why it is not run (None: run it)


def find_student(explicit: str | None) -> Path | None:
    """``--student``, else the published tiny LCM student, else the latest ``make demo`` checkpoint (under this
    folder's ``output/demo``)."""
    if explicit:
        return Path(explicit).resolve()
    if repo_path("assets/tiny_lcm/model.safetensors").is_file():
        return repo_path("assets/tiny_lcm/model.safetensors")
    from diffusion.engine.checkpoint import list_checkpoints  # here: the engine is not needed to list the jobs

    found = [c / "model.safetensors" for c in list_checkpoints(Path("output/demo/lcm/checkpoints").resolve())]
    found = [f for f in found if f.is_file()]  # by step (list_checkpoints), not by name
    return found[-1] if found else None


def default_jobs(args: argparse.Namespace, out: Path | None = None) -> list[Job]:
    """The jobs of the command line ``args`` (``student``, ``num_images``, ``sweep``, ``controlnet_steps``,
    ``controlnet_images``); every output folder a command takes (``--out``, ``--work-root``) is under ``out``
    (default: this folder's ``output/tables``)."""
    out = Path(out or "output/tables").resolve()
    student = find_student(args.student)
    lcm = Job("lcm", "LCM vs teacher quality (PixArt-δ Table 2 / Fig. 7, small scale)", "tools/reproduce_lcm.py")
    if student is None:
        lcm.skip = "no distilled student: run `make demo` first or pass --student"
    else:
        lcm.args = ["--student", str(student), "--num-images", str(args.num_images), "--out", str(out / "_lcm")]
    sweep = Job("sweep", "Guidance in LCM distillation (PixArt-δ Fig. 2, small scale)", "tools/sweep_lcm.py")
    sweep.args = ["--out", str(out / "_sweep")]
    if not args.sweep:
        sweep.skip = "the slowest job; pass --sweep to run it"
    controlnet = Job("controlnet", "ControlNet-Transformer ablation (PixArt-δ §4)", "tools/reproduce_controlnet.py")
    # trains its rows itself (a finished row in OUT/_cn_ablation/<N>steps/ is reused), curve on half the controls
    images = args.controlnet_images
    controlnet.args = ["--train", "--train-steps", str(args.controlnet_steps), "--curve", "n3"]
    controlnet.args += ["--num-images", str(images), "--curve-images", str(max(1, images // 2))]
    controlnet.args += ["--out", str(out / "_controlnet")]
    controlnet.args += ["--work-root", str(out / "_cn_ablation" / f"{args.controlnet_steps}steps")]
    return [
        lcm,
        sweep,
        controlnet,
        Job("speed", "Sampling speed (PixArt-δ Table 2)", "tools/benchmark_speed.py"),
        Job("memory", "Training memory (PixArt-δ Table 1, §3.3)", "tools/benchmark_memory.py"),
        # README "Table 1 and Table 2 at full size, without a GPU": simulated memory and the roofline (no GPU needed)
        Job(
            "memory_simulated", "PixArt-δ Table 1 at full size, simulated", "tools/benchmark_memory.py", ["--simulate"]
        ),
        Job("roofline", "PixArt-δ Table 2, roofline lower bound", "tools/benchmark_speed.py", ["--roofline"]),
    ]


def machine() -> str:
    """One line: CPU, cores, GPU (if any), torch version, and the load average when the run started."""
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    load = ", ".join(f"{v:.1f}" for v in os.getloadavg()) if hasattr(os, "getloadavg") else "n/a"
    return f"{cpu}, {os.cpu_count()} cores, {gpu}, torch {torch.__version__}, load average at start {load}"


def commit() -> str:
    """``git describe``-like stamp: the HEAD hash, ``+dirty`` when tracked files differ from it."""
    try:
        head = subprocess.run(["git", "rev-parse", "--short=12", "HEAD"], cwd=ROOT, capture_output=True, text=True)
        dirty = subprocess.run(["git", "status", "--porcelain", "-uno"], cwd=ROOT, capture_output=True, text=True)
    except OSError:
        return "unknown (no git)"
    return head.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "") if head.returncode == 0 else "unknown"


def extract_tables(stdout: str) -> str:
    """The part of ``stdout`` from the line before the first markdown table row to the last table row."""
    lines = stdout.splitlines()
    rows = [i for i, line in enumerate(lines) if line.lstrip().startswith("|")]
    if not rows:
        return ""
    start = rows[0]
    if start > 0 and not lines[start - 1].strip():
        start -= 1  # the blank line between a caption paragraph and its table
    while start > 0 and lines[start - 1].strip() and not lines[start - 1].lstrip().startswith(("{", "[")):
        start -= 1  # keep the caption paragraph (not the JSON progress lines some tools print before it)
    return "\n".join(lines[start : rows[-1] + 1]) + "\n"


def run_job(job: Job, out: Path, stamp: str) -> str:
    """Run one job, write ``out/<name>.md``; returns its index line."""
    tool = ROOT / job.tool
    if job.skip is None and not tool.is_file():
        job.skip = f"{job.tool} does not exist in this checkout"
    if job.skip is not None:
        print(f"[tables] skip {job.name}: {job.skip}", flush=True)
        return f"- {job.name}: skipped ({job.skip})"
    command = [sys.executable, job.tool, *job.args]
    shown = shlex.join(["python", job.tool, *job.args])
    print(f"[tables] {job.name}: {shown}", flush=True)
    start = time.time()
    result = subprocess.run(command, cwd=ROOT, stdout=subprocess.PIPE, text=True)  # stderr (progress) passes through
    wall = time.time() - start
    body = extract_tables(result.stdout)
    ok = result.returncode == 0 and bool(body)
    if not ok:
        tail = "\n".join(result.stdout.splitlines()[-20:])
        why = f"exit code {result.returncode}" if result.returncode else "no markdown table on stdout"
        body = f"**FAILED** ({why}); last lines of stdout:\n\n```\n{tail}\n```\n"
    header = f"## {job.title}\n\n{stamp}\n- command: `{shown}` ({wall:.0f} s wall)\n\n"
    (out / f"{job.name}.md").write_text(header + body)
    status = "ok" if ok else "FAILED"
    print(f"[tables] {job.name}: {status} in {wall:.0f} s -> {out / (job.name + '.md')}", flush=True)
    return f"- [{job.name}]({job.name}.md): {status}, {wall:.0f} s, `{shown}`"


def rebuild(jobs: list[Job], out: Path, run_by: str) -> int:
    """Run ``jobs`` into ``out`` and write ``out/index.md`` (what ran, what was skipped), stamped with the machine, the
    commit, the date and ``run_by`` (the command line); the exit code: 1 when a job failed, else 0."""
    stamp = "\n".join(
        [
            f"- machine: {machine()}",
            f"- commit: {commit()}",
            f"- date: {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}",
            f"- run by: `{run_by}`",
        ]
    )
    lines = [run_job(job, out, stamp) for job in jobs]
    (out / "index.md").write_text("# Tables\n\n" + stamp + "\n\n" + "\n".join(lines) + "\n")
    print((out / "index.md").read_text())
    return 1 if any("FAILED" in line for line in lines) else 0
