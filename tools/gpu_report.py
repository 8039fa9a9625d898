"""Every GPU measurement the repo has, in one run of under 8 minutes, written as one markdown report.

Steps (each a subprocess with its own time limit; a step that fails or runs out of time is reported as such and the
rest still run):
  1. parity: full-size PixArtMS-XL/2 (random weights) vs diffusers' ``PixArtTransformer2DModel`` with the same
     weights, one 1024² forward in fp32 and in bf16;
  2. ``benchmark_model.py`` at depth 28, 1024², bf16, without and with ``torch.compile``;
  3. ``benchmark_speed.py`` at full size (paper Table 2: LCM 4 steps, DPM-Solver 14 / 20 steps with CFG);
  4. with ``--compile`` / ``--cuda-graphs``: ``benchmark_speed.py`` LCM 4 steps again, with our pipeline also run
     with regional compilation of the blocks / the whole step under CUDA graphs (first, compiling, call reported
     apart from the steady state);
  5. ``benchmark_memory.py`` at the paper's sizes (LCM step at batch 12 with gradient checkpointing, teacher step,
     ControlNet when present, 1024² inference with bf16 and int8 T5), then, row by row, its measured
     ``torch.cuda.max_memory_allocated`` peak beside the simulated one (``benchmark_memory.py --simulate`` of the same
     rows and size, which needs no GPU: it runs on the CPU, one thread, alongside the GPU steps) and their ratio.
``--tiny`` runs the same steps at tiny size on the CPU (the test suite does, end to end; CUDA graphs are skipped
there, with a line saying so). A GPU machine may lack
mmengine / diffusers / torchao: ``--wheels DIR`` installs the pinned wheels found there (``make gpu-wheels`` fills
``.whl/``) into ``OUT/site`` and puts it on the path of every step. A machine with the checkout but not its install
(no ``make venv`` there) runs it with the checkout on ``PYTHONPATH``, as ``make gpu-report`` does.

    PYTHONPATH=$PWD python3 tools/gpu_report.py --out output/gpu_report --wheels .whl --compile --cuda-graphs
    python tools/gpu_report.py --tiny --out /tmp/gpu_report
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]  # the checkout: the steps are its commands, run there

NEEDED = ("mmengine", "diffusers", "torchao")  # modules the steps import that a bare GPU image may lack
MEMORY_ROWS_GPU = (
    "lcm-fp16-fp32copies",
    "lcm-bf16",
    "teacher-bf16",
    "controlnet-bf16",
    "infer-bf16",
    "infer-int8-lean",
)
MEMORY_ROWS_TINY = ("lcm-bf16", "infer-int8-lean")
# Seconds each step may take on the GPU (parity, eager, compiled, speed, compiled speed, memory): 8 minutes together.
LIMITS = (35, 45, 110, 75, 80, 135)
# The simulation of the memory rows runs beside the GPU steps; after them it may take this much longer (full size:
# a few minutes of one CPU core for the six rows).
SIMULATION_EXTRA = 240


def install_wheels(wheels: Path | None, site: Path) -> dict[str, str]:
    """Install the wheels of ``wheels`` into ``site`` when a needed module is missing; the env for the steps."""
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    missing = [m for m in NEEDED if importlib.util.find_spec(m) is None]
    if missing:
        files = sorted(wheels.glob("*.whl")) if wheels else []
        if not files:
            raise SystemExit(f"modules {missing} are missing and no --wheels folder with .whl files was given")
        cmd = [sys.executable, "-m", "pip", "install", "-q", "--no-index", "--no-deps", "--target", str(site)]
        subprocess.run([*cmd, *map(str, files)], check=True)
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(site), env.get("PYTHONPATH")]))
    return env


def steps(args) -> list[tuple[str, list[str], float]]:
    """(title, command, time limit in seconds) of every measurement, at the real or the tiny size."""
    py, out = sys.executable, Path(args.out)
    tools = ROOT / "tools"
    speed_cmd, memory_cmd = [py, str(tools / "benchmark_speed.py")], [py, str(tools / "benchmark_memory.py")]
    if args.tiny:
        dev, model_size = ["--device", "cpu"], ["--depth", "1", "--resolution", "64", "--batch", "1"]
        speed = ["--size", "tiny", "--runs", "1"]
        memory = ["--size", "tiny", "--rows", *MEMORY_ROWS_TINY]
        compiled = ["--size", "tiny", "--runs", "1", "--rows", "lcm4"]
        compile_step = None
    else:
        dev, model_size = ["--device", "cuda"], ["--depth", "28", "--resolution", "1024", "--ms", "--batch", "1"]
        speed = ["--size", "full", "--runs", "3", "--dtype", "bf16"]
        memory = ["--size", "full", "--rows", *MEMORY_ROWS_GPU, "--row-timeout", "60"]
        compiled = ["--size", "full", "--runs", "3", "--rows", "lcm4", "--dtype", "bf16"]
        compile_step = ["--compile", "--warmup", "2", "--repeats", "3"]
    switches = ["--compile"] * args.compile + ["--cuda-graphs"] * (args.cuda_graphs and not args.tiny)
    model = [py, str(tools / "benchmark_model.py"), *dev, *model_size, "--precisions", "bf16"]
    todo = [
        ("Parity: our transformer vs diffusers (same weights)", [py, __file__, "--parity", *["--tiny"][: args.tiny]]),
        ("benchmark_model.py: transformer forward / train step, eager", [*model, "--warmup", "2", "--repeats", "5"]),
        (
            "benchmark_model.py with torch.compile (compile time excluded)",
            [*model, *compile_step] if compile_step else None,
        ),
        ("benchmark_speed.py: paper Table 2", [*speed_cmd, *dev, *speed, "--json", str(out / "speed.json")]),
        (
            f"benchmark_speed.py: LCM 4 steps, {' and '.join(s[2:] for s in switches)}",
            [*speed_cmd, *dev, *compiled, *switches, "--json", str(out / "speed_compiled.json")] if switches else None,
        ),
        (
            "benchmark_memory.py: training and inference memory",
            [*memory_cmd, *dev, *memory, "--json", str(out / "memory.json")],
        ),
    ]
    todo = [(title, cmd, limit) for (title, cmd), limit in zip(todo, LIMITS) if cmd is not None]
    # --tiny runs on a CPU that other jobs may share: the limits are there to bound a GPU run, not to judge a CPU.
    return [(title, cmd, limit * 10 if args.tiny else limit) for title, cmd, limit in todo]


def simulation(args, env: dict) -> tuple[list[str], subprocess.Popen]:
    """Start ``benchmark_memory.py --simulate`` of the memory step's rows and size (one thread, on the CPU, output to
    ``OUT/memory_simulated.*``): the command and the running process."""
    size, rows = ("tiny", MEMORY_ROWS_TINY) if args.tiny else ("full", MEMORY_ROWS_GPU)
    out = Path(args.out)
    cmd = [sys.executable, str(ROOT / "tools" / "benchmark_memory.py"), "--simulate", "--size", size, "--rows", *rows]
    cmd += ["--json", str(out / "memory_simulated.json")]
    with open(out / "memory_simulated.log", "w") as log:
        proc = subprocess.Popen(cmd, cwd=ROOT, env=dict(env, OMP_NUM_THREADS="1"), stdout=log, stderr=log)
    return cmd, proc


def compare_memory(out: Path, proc: subprocess.Popen, limit: float, env: dict) -> tuple[str, str]:
    """(status, markdown) of simulated vs measured memory (``benchmark_memory.py --compare``), once the simulation
    ``proc`` has finished."""
    try:
        proc.wait(timeout=limit)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        return f"simulation ran past {limit:.0f} s after the GPU steps", ""
    if proc.returncode:
        log = (out / "memory_simulated.log").read_text().strip().splitlines()[-3:]
        return f"simulation failed (exit {proc.returncode})", "\n".join(log)
    cmd = [sys.executable, str(ROOT / "tools" / "benchmark_memory.py"), "--compare"]
    cmd += [str(out / "memory_simulated.json"), str(out / "memory.json")]
    compared = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    if compared.returncode:
        return f"comparison failed (exit {compared.returncode})", "\n".join(compared.stderr.splitlines()[-3:])
    return "ok", compared.stdout.strip()


def parity(tiny: bool) -> dict:
    """max |ours - diffusers| / max |ours| of one forward, fp32 and bf16, full size on the GPU (tiny on the CPU)."""
    import torch

    from diffusion.bench import diffusers_twin, get_size, random_pixart
    from diffusion.model.diffusers_format import diffusers_forward

    device = "cpu" if tiny else "cuda"
    size = get_size("tiny" if tiny else "full")
    ours = random_pixart(size).to(device).eval().requires_grad_(False)
    theirs = diffusers_twin(ours)
    g = torch.Generator().manual_seed(0)
    side, channels = size.resolution // 8, size.model.get("caption_channels", 4096)
    mask = torch.zeros(1, 120, dtype=torch.long)
    mask[:, :20] = 1
    hw = torch.full((1, 2), float(size.resolution))
    inputs = [
        torch.randn(1, 4, side, side, generator=g),
        torch.tensor([500]),
        torch.randn(1, 1, 120, channels, generator=g),
        mask,
    ]
    inputs = [t.to(device) for t in inputs] + [
        {"img_hw": hw.to(device), "aspect_ratio": torch.ones(1, 1, device=device)}
    ]
    result = {}
    for name, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16)):
        ours.to(dtype), theirs.to(dtype)
        cast = [t.to(dtype) if torch.is_tensor(t) and t.is_floating_point() and t.ndim == 4 else t for t in inputs]
        with torch.no_grad():
            a, b = ours(*cast).float(), diffusers_forward(theirs, *cast).float()
        result[name] = ((a - b).abs().max() / a.abs().max()).item()
    print(f"| precision | max abs diff / max abs output |\n|---|---|\n| fp32 | {result['fp32']:.1e} |")
    print(f"| bf16 | {result['bf16']:.1e} |\n\n{size.describe()}, one forward, batch 1, t = 500")
    return result


def _shown(arg: str) -> str:
    if arg == sys.executable:
        return "python"
    return os.path.relpath(arg, ROOT) if arg.startswith(str(ROOT)) else arg


def main(argv: list[str] | None = None) -> Path:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default=None, help="folder for report.md, log.txt and the JSON results")
    parser.add_argument("--tiny", action="store_true", help="tiny sizes on the CPU (the end-to-end test)")
    parser.add_argument("--wheels", type=Path, default=None, help="folder of pinned wheels for missing packages")
    parser.add_argument("--compile", action="store_true", help="add the speed step with regional torch.compile")
    parser.add_argument("--cuda-graphs", action="store_true", help="add the speed step with CUDA graphs (GPU only)")
    parser.add_argument("--parity", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.parity:
        parity(args.tiny)
        return Path()
    if args.out is None:
        parser.error("--out is required")
    if importlib.util.find_spec("diffusion") is None:
        raise SystemExit(f"the diffusion package is not importable: make venv, or PYTHONPATH={ROOT} (make gpu-report)")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    env = install_wheels(args.wheels, out / "site")
    git = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True)
    probe = (
        "import torch; print(torch.cuda.get_device_name() if torch.cuda.is_available() else 'CPU', torch.__version__)"
    )
    card = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, env=env).stdout.strip()
    stamp = time.gmtime()
    report = [
        "# GPU report" + (" (--tiny: CPU smoke run, not measurements)" if args.tiny else ""),
        "",
        f"Device: {card}; commit {git.stdout.strip() or 'unknown'}; {time.strftime('%Y-%m-%d %H:%M UTC', stamp)}",
    ]
    if args.cuda_graphs and args.tiny:
        report += ["", "CUDA graphs skipped: --tiny runs on the CPU and CUDA graphs need CUDA."]
    start_all = time.perf_counter()
    sim_cmd, sim_proc = simulation(args, env)
    with open(out / "log.txt", "w") as log:
        for title, cmd, limit in steps(args):
            start = time.perf_counter()
            shown = " ".join(_shown(c) for c in cmd)
            print(f"== {title}: {shown}", file=sys.stderr, flush=True)
            try:
                proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=limit)
                body, status = (
                    proc.stdout.strip(),
                    "ok" if proc.returncode == 0 else f"failed (exit {proc.returncode})",
                )
                log.write(f"== {title}\n{proc.stderr}\n")
                if proc.returncode:
                    body += "\n\n" + "\n".join(proc.stderr.strip().splitlines()[-5:])
            except subprocess.TimeoutExpired as e:  # keep what the step printed before its limit
                partial = e.stdout.decode() if isinstance(e.stdout, bytes) else e.stdout or ""
                body, status = partial.strip(), f"ran past {limit:.0f} s"
            seconds = time.perf_counter() - start
            report += ["", f"## {title}", "", f"`{shown}` — {status}, {seconds:.0f} s", "", body]
            log.flush()
    start = time.perf_counter()
    status, body = compare_memory(out, sim_proc, SIMULATION_EXTRA * (10 if args.tiny else 1), env)
    shown = " ".join(_shown(c) for c in sim_cmd)
    title = "Memory: simulated (no GPU) vs measured, row by row"
    waited = f"{time.perf_counter() - start:.0f} s after the GPU steps"
    report += ["", f"## {title}", "", f"`{shown}` — {status}, {waited}", "", body]
    report += ["", f"Total: {time.perf_counter() - start_all:.0f} s"]
    (out / "report.md").write_text("\n".join(report) + "\n")
    print("\n".join(report))
    return out / "report.md"


if __name__ == "__main__":
    main()
