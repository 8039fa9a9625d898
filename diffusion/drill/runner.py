"""The fault drill's runner (``tools/fault_drill.py``): its dataset and config, the training runs it starts (the
training child ``python -m diffusion.drill.inject``), each in a subprocess bounded by ``RUN_TIMEOUT`` (a hang is
killed with every process it started), the uninterrupted reference run and the checks that a faulted run lost nothing
against it. The faults themselves are :mod:`diffusion.drill.scenarios`.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

from diffusion.drill import probes
from diffusion.paths import ROOT, repo_path

# seconds one training run may take (the longest, the 2-rank torchrun with its restart, took 60-100 s on the 2 cores
# shared with other jobs and a busy loop); a run still going then is a hang, killed and recorded as a failure
RUN_TIMEOUT, HUNG = 300, 124
STEPS, EVERY = 8, 3  # checkpoints at 3 and 6 and the end; 6 batches of 8 per epoch: the runs cross an epoch
OVERRIDES = {
    "model.hidden_size": 64,
    "model.depth": 1,
    "model.num_heads": 2,
    "train.max_steps": STEPS,
    "train.batch_size": 8,
    "train.mixed_precision": "no",
    "train.ema_rate": 0.9,
    "train.num_workers": 0,
    "checkpoint.every": EVERY,
    "checkpoint.keep_last": 2,
    "log.every": 1,
    "validation.every": 1000,
    "validation.prompts": ["a large red circle at the top left on a gray background"],
}


def checkpoint_dir(work: str | os.PathLike, step: int, tmp: bool = False) -> Path:
    """``work``'s checkpoint folder of ``step`` (``tmp``: the ``.tmp`` folder its save writes first), named by
    :mod:`diffusion.engine.checkpoint` (imported here, not at the top: the drill's parent process stays light)."""
    from diffusion.engine import checkpoint as ckpt

    path = ckpt.step_dir(Path(work) / ckpt.CHECKPOINT_SUBDIR, step)
    return path.with_suffix(".tmp") if tmp else path


class Drill:
    """Starts and checks the drill's training runs under ``out``; ``results`` collects the scenarios' records
    (name, survived, lost, detail)."""

    def __init__(self, out: Path, mount: bool = True) -> None:
        self.out, self.results, self.mount, self.runs = out, [], mount, 0
        self.env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
        self.env.update(WANDB_MODE="disabled", HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1", CUDA_VISIBLE_DEVICES="")

    def prepare(self) -> None:
        """The drill's dataset and config (``out/data``, ``out/t5``, ``out/config.py``)."""
        from mmengine.config import Config

        from diffusion.data.default import ensure_embedded_default
        from diffusion.data.text_encoder import ensure_tiny_text_encoder

        t5 = ensure_tiny_text_encoder(self.out / "t5")
        data = ensure_embedded_default(root=self.out / "data", num=48, text_encoder_path=t5, control=False)
        cfg = Config.fromfile(str(repo_path("configs/pixart/tiny_teacher.py")))
        cfg.merge_from_dict({**OVERRIDES, "data.root": str(data), "text_encoder.path": str(t5)})
        cfg.validation.sampler = {"name": "ddim", "steps": 2, "cfg_scale": 1.0}  # a base None takes no dict merge
        cfg.dump(str(self.out / "config.py"))

    def command(
        self, work: Path, spec: dict | None, options: dict, resume: str | None, ranks: int, config: Path | None = None
    ) -> list[str]:
        """The training child's command line; ``config`` defaults to the drill's feature-cache config."""
        cmd = [sys.executable]
        if ranks > 1:
            cmd += ["-m", "torch.distributed.run", "--nproc_per_node", str(ranks), "--max-restarts", "1"]
            cmd += ["--standalone"]
        cmd += ["-m", "diffusion.drill.inject", json.dumps(spec or {}), str(config or self.out / "config.py")]
        cmd += ["--work-dir", str(work)] + (["--resume", resume] if resume else [])
        if options:
            cmd += ["--cfg-options", *(f"{k}={v}" for k, v in options.items())]
        return cmd

    def start(self, cmd: list[str], work: Path, new_session: bool = False) -> subprocess.Popen:
        """Start ``cmd`` with its stdout and stderr going to ``out/logs/<work name>.<n>.{out,err}`` (files, not pipes:
        nothing blocks on a full pipe, and the logs stay for a look after the drill); ``new_session``: in a process
        group of its own (that a scenario signals as a whole)."""
        self.runs += 1
        logs = self.out / "logs" / f"{Path(work).name}.{self.runs}"
        logs.parent.mkdir(parents=True, exist_ok=True)
        with open(f"{logs}.out", "w") as out, open(f"{logs}.err", "w") as err:
            proc = subprocess.Popen(cmd, cwd=ROOT, env=self.env, stdout=out, stderr=err, start_new_session=new_session)
        proc.logs = logs
        return proc

    def finish(self, proc: subprocess.Popen, timeout: float = RUN_TIMEOUT) -> subprocess.CompletedProcess:
        """Wait for ``proc``; past ``timeout`` seconds it is a hang: it and every process it started are killed and
        the run ends with ``rc 124`` and a stderr that ends by saying so. Whatever stops the drill here kills them
        too."""
        try:
            proc.wait(timeout=timeout)
            hung = False
        except subprocess.TimeoutExpired:
            hung = True
        except BaseException:
            probes.kill_tree(proc.pid)
            raise
        if hung:
            probes.kill_tree(proc.pid)
            proc.wait()
        out, err = (Path(f"{proc.logs}.{name}").read_text(errors="replace") for name in ("out", "err"))
        if hung:
            err += f"\ndrill: no exit after {timeout:.0f} s (a hang), killed; logs in {proc.logs}.*"
        return subprocess.CompletedProcess(proc.args, HUNG if hung else proc.returncode, out, err)

    def train(self, work, spec=None, options=None, resume=None, ranks=1, config=None) -> subprocess.CompletedProcess:
        return self.finish(self.start(self.command(Path(work), spec, options or {}, resume, ranks, config), work))

    def record(self, name: str, survived: bool, lost: bool, detail: str) -> None:
        self.results.append((name, survived, lost, detail))
        print(f"[{'ok' if survived and not lost else 'FAIL'}] {name}: {detail}", flush=True)

    def same_as_reference(self, work: Path, ref: Path | None = None) -> tuple[bool, str]:
        """Per-step losses (each step once) and final weights of ``work`` equal the reference's."""
        import torch

        from diffusion.engine import checkpoint as ckpt

        ref = ref or self.out / "reference"
        got, want = probes.losses(work), probes.losses(ref)
        if got != want:
            return False, f"losses differ: {got} vs {want}"
        for name in ("model", "ema"):
            a = ckpt.load_tensors(checkpoint_dir(work, STEPS) / f"{name}.safetensors")
            b = ckpt.load_tensors(checkpoint_dir(ref, STEPS) / f"{name}.safetensors")
            if a.keys() != b.keys() or not all(torch.equal(a[k], b[k]) for k in a):
                return False, f"final {name} weights differ"
        return True, f"{len(got)} losses and final weights equal the uninterrupted run"

    def verify_resume(self, work: Path, kept: list[int], ref: Path | None = None, **train) -> tuple[bool, str]:
        """Checkpoints ``kept`` survived, a resume leaves no ``.tmp`` and equals the reference: (lost, detail)."""
        missing = [s for s in kept if not (checkpoint_dir(work, s) / "training_state.pt").is_file()]
        result = self.train(work, resume="auto", **train)
        tmp_left = sorted(p.name for p in (work / "checkpoints").glob("*.tmp"))
        same, detail = self.same_as_reference(work, ref) if result.returncode == 0 else (False, probes.tail(result))
        detail = f"kept {kept}{' MISSING ' + str(missing) if missing else ''}; resumed: {detail}"
        return bool(missing) or bool(tmp_left) or not same, detail + (f"; tmp left: {tmp_left}" if tmp_left else "")

    def resume_check(
        self, name: str, work: Path, cause_ok: bool, cause: str, kept: list[int], ref: Path | None = None, **train
    ) -> None:
        """Record scenario ``name``: the fault was handled (``cause_ok``) and :meth:`verify_resume` found no loss."""
        lost, detail = self.verify_resume(work, kept, ref, **train)
        self.record(name, cause_ok, lost, f"{cause}; {detail}")

    def reference(self) -> None:
        """The uninterrupted run every scenario is compared with (not a fault)."""
        result = self.train(self.out / "reference", options={"checkpoint.keep_last": 0})  # keeps every checkpoint
        if result.returncode != 0 or len(probes.losses(self.out / "reference")) != STEPS:
            raise SystemExit(f"the reference run failed:\n{probes.tail(result)}")
