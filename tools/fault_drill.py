"""Fault drill (issue 10): inject the faults a long PixArt-α/δ run meets (§3.3 runs are preempted, killed and resumed
many times) into real training runs of a tiny config and check that each one is survived.

    python tools/fault_drill.py [--out output/fault_drill] [--only sigkill_mid_run,pickle_pth ...]

The drill trains a shrunk PixArt_tiny (configs/pixart/tiny_teacher.py, one block) on a small embedded-shapes dataset
it builds itself (real T5 features and latents through the real FeatureDataset), first uninterrupted (the reference),
then once per fault. A fault is *survived* when the run either recovers by itself or stops with an error that names
the cause, and the drill then checks that *nothing finished is lost*: every completed checkpoint is still there and a
resumed run's per-step losses and final weights equal the reference bit for bit. The last line is
``faults injected: N, survived: N, data lost: 0``; the exit status is non-zero unless every fault was survived.

Faults are injected from inside the training process by tools/fault_inject.py (a JSON spec, then
``train_scripts/train.py``'s main): SIGKILL at a step or in the middle of a checkpoint write, a rank killed on the
first torchrun attempt, NaN losses, a sleep per step (so an outside SIGTERM lands mid-run). Disk full is a real tmpfs
of a size between one and two checkpoints (we are root), else a file-size limit set on the running process.

Every run's stdout and stderr go to ``out/logs/<run dir>.<n>.{out,err}``. A run that has not exited after
``RUN_TIMEOUT`` seconds is a hang: it is killed with every process it started (torchrun's workers too) and its
scenario fails with ``rc 124`` and the tail of its stderr, so the drill always ends with its last line.
"""

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tools import fault_inject as inject  # noqa: E402

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


# ---------------------------------------------------------------- the drill
class Drill:
    """Runs and checks the scenarios under ``out``; ``results`` collects (name, survived, lost, detail)."""

    def __init__(self, out: Path, mount: bool = True) -> None:
        self.out, self.results, self.mount, self.runs = out, [], mount, 0
        self.env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
        self.env.update(WANDB_MODE="disabled", HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1", CUDA_VISIBLE_DEVICES="")
        self.env["PYTHONPATH"] = str(REPO)

    # ------------------------------------------------------------ helpers
    def prepare(self) -> None:
        """The drill's dataset and config (``out/data``, ``out/t5``, ``out/config.py``)."""
        from mmengine.config import Config

        from diffusion.data.default import ensure_embedded_default
        from diffusion.data.text_encoder import ensure_tiny_text_encoder

        t5 = ensure_tiny_text_encoder(self.out / "t5")
        data = ensure_embedded_default(root=self.out / "data", num=48, text_encoder_path=t5, control=False)
        cfg = Config.fromfile(str(REPO / "configs" / "pixart" / "tiny_teacher.py"))
        cfg.merge_from_dict({**OVERRIDES, "data.root": str(data), "text_encoder.path": str(t5)})
        cfg.validation.sampler = {"name": "ddim", "steps": 2, "cfg_scale": 1.0}  # a base None takes no dict merge
        cfg.dump(str(self.out / "config.py"))

    def command(self, work: Path, spec: dict | None, options: dict, resume: str | None, ranks: int) -> list[str]:
        cmd = [sys.executable]
        if ranks > 1:
            cmd += ["-m", "torch.distributed.run", "--nproc_per_node", str(ranks), "--max-restarts", "1"]
            cmd += ["--standalone"]
        cmd += [str(REPO / "tools" / "fault_inject.py"), json.dumps(spec or {}), str(self.out / "config.py")]
        cmd += ["--work-dir", str(work)] + (["--resume", resume] if resume else [])
        if options:
            cmd += ["--cfg-options", *(f"{k}={v}" for k, v in options.items())]
        return cmd

    def start(self, cmd: list[str], work: Path) -> subprocess.Popen:
        """Start ``cmd`` with its stdout and stderr going to ``out/logs/<work name>.<n>.{out,err}`` (files, not pipes:
        nothing blocks on a full pipe, and the logs stay for a look after the drill)."""
        self.runs += 1
        logs = self.out / "logs" / f"{Path(work).name}.{self.runs}"
        logs.parent.mkdir(parents=True, exist_ok=True)
        with open(f"{logs}.out", "w") as out, open(f"{logs}.err", "w") as err:
            proc = subprocess.Popen(cmd, cwd=REPO, env=self.env, stdout=out, stderr=err)
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
            inject.kill_tree(proc.pid)
            raise
        if hung:
            inject.kill_tree(proc.pid)
            proc.wait()
        out, err = (Path(f"{proc.logs}.{name}").read_text(errors="replace") for name in ("out", "err"))
        if hung:
            err += f"\ndrill: no exit after {timeout:.0f} s (a hang), killed; logs in {proc.logs}.*"
        return subprocess.CompletedProcess(proc.args, HUNG if hung else proc.returncode, out, err)

    def train(self, work, spec=None, options=None, resume=None, ranks=1) -> subprocess.CompletedProcess:
        return self.finish(self.start(self.command(Path(work), spec, options or {}, resume, ranks), work))

    def record(self, name: str, survived: bool, lost: bool, detail: str) -> None:
        self.results.append((name, survived, lost, detail))
        print(f"[{'ok' if survived and not lost else 'FAIL'}] {name}: {detail}", flush=True)

    def same_as_reference(self, work: Path, ref: Path | None = None) -> tuple[bool, str]:
        """Per-step losses (each step once) and final weights of ``work`` equal the reference's."""
        import torch

        from diffusion.engine import checkpoint as ckpt

        ref = ref or self.out / "reference"
        got, want = inject.losses(work), inject.losses(ref)
        if got != want:
            return False, f"losses differ: {got} vs {want}"
        for name in ("model", "ema"):
            a = ckpt.load_tensors(ckpt.step_dir(work / "checkpoints", STEPS) / f"{name}.safetensors")
            b = ckpt.load_tensors(ckpt.step_dir(ref / "checkpoints", STEPS) / f"{name}.safetensors")
            if a.keys() != b.keys() or not all(torch.equal(a[k], b[k]) for k in a):
                return False, f"final {name} weights differ"
        return True, f"{len(got)} losses and final weights equal the uninterrupted run"

    def verify_resume(self, work: Path, kept: list[int], ref: Path | None = None, **train) -> tuple[bool, str]:
        """Checkpoints ``kept`` survived, a resume leaves no ``.tmp`` and equals the reference: (lost, detail)."""
        missing = [s for s in kept if not (work / "checkpoints" / f"step_{s:07d}" / "training_state.pt").is_file()]
        result = self.train(work, resume="auto", **train)
        tmp_left = sorted(p.name for p in (work / "checkpoints").glob("*.tmp"))
        same, detail = self.same_as_reference(work, ref) if result.returncode == 0 else (False, inject.tail(result))
        detail = f"kept {kept}{' MISSING ' + str(missing) if missing else ''}; resumed: {detail}"
        return bool(missing) or bool(tmp_left) or not same, detail + (f"; tmp left: {tmp_left}" if tmp_left else "")

    def resume_check(
        self, name: str, work: Path, cause_ok: bool, cause: str, kept: list[int], ref: Path | None = None, **train
    ) -> None:
        """Record scenario ``name``: the fault was handled (``cause_ok``) and :meth:`verify_resume` found no loss."""
        lost, detail = self.verify_resume(work, kept, ref, **train)
        self.record(name, cause_ok, lost, f"{cause}; {detail}")

    # ------------------------------------------------------------ scenarios
    def reference(self) -> None:
        """The uninterrupted run every scenario is compared with (not a fault)."""
        result = self.train(self.out / "reference", options={"checkpoint.keep_last": 0})  # keeps every checkpoint
        if result.returncode != 0 or len(inject.losses(self.out / "reference")) != STEPS:
            raise SystemExit(f"the reference run failed:\n{inject.tail(result)}")

    def sigkill_mid_run(self) -> None:
        work = self.out / "sigkill_mid_run"
        result = self.train(work, spec={"kill_at_step": 5})
        killed = result.returncode == -signal.SIGKILL
        self.resume_check("SIGKILL mid-run", work, killed, f"killed at step 5 (rc {result.returncode})", [3])

    def sigkill_mid_checkpoint(self) -> None:
        work = self.out / "sigkill_mid_checkpoint"
        result = self.train(work, spec={"kill_in_save": 6})
        half = (work / "checkpoints" / "step_0000006.tmp").is_dir() and not (
            work / "checkpoints" / "step_0000006"
        ).exists()
        self.resume_check(
            "SIGKILL mid-checkpoint-write",
            work,
            result.returncode == -signal.SIGKILL and half,
            "killed after writing one file of step 6 (a half-written step_0000006.tmp, ignored)",
            [3],
        )

    def sigterm(self) -> None:
        work = self.out / "sigterm"
        proc = self.start(self.command(work, {"sleep": 0.5}, {}, None, 1), work)
        deadline = time.time() + RUN_TIMEOUT
        while len(inject.losses(work)) < 4 and proc.poll() is None and time.time() < deadline:
            time.sleep(0.1)
        proc.send_signal(signal.SIGTERM)
        result = self.finish(proc)
        stopped_at = len(inject.losses(work))
        saved = (work / "checkpoints" / f"step_{stopped_at:07d}").is_dir()
        log = (work / "train.log").read_text() if (work / "train.log").is_file() else ""
        ok = result.returncode == 0 and saved and "stopped by SIGTERM" in log
        cause = f"rc {result.returncode}, checkpoint at stop step {stopped_at}: {saved}"
        self.resume_check("SIGTERM", work, ok, cause + ("" if ok else f" ({inject.tail(result)})"), [stopped_at])

    def torchrun_rank_killed(self) -> None:
        ref = self.out / "reference_2ranks"
        first = self.train(ref, ranks=2)
        work = self.out / "torchrun_rank_killed"
        result = self.train(work, spec={"kill_at_step": 5, "rank": 1}, resume="auto", ranks=2)
        log = (work / "train.log").read_text() if (work / "train.log").is_file() else ""
        restarted = result.returncode == 0 and f"resumed from {work / 'checkpoints' / 'step_0000003'}" in log
        if first.returncode != 0:
            same, detail = False, f"the 2-rank reference failed: {inject.tail(first)}"
        elif result.returncode != 0:
            same, detail = False, inject.tail(result, 1500)
        else:
            same, detail = self.same_as_reference(work, ref)
        kept = (work / "checkpoints" / "step_0000006").is_dir()
        self.record(
            "rank killed under torchrun --max-restarts 1",
            restarted,
            not (same and kept),
            f"rank 1 SIGKILLed at step 5, rc {result.returncode}, restarted and resumed by itself: {detail}",
        )
        work = self.out / "torchrun_sigterm_one_rank"
        result = self.train(work, spec={"kill_at_step": 4, "signal": "SIGTERM", "rank": 1}, ranks=2)
        both = result.returncode == 0 and (work / "checkpoints" / "step_0000004").is_dir()
        cause = f"SIGTERM to rank 1 only in step 4: rc {result.returncode}, both ranks saved step 4 and exited: {both}"
        self.resume_check("SIGTERM to one rank under torchrun", work, both, cause, [4], ref=ref, ranks=2)

    def disk_full(self) -> None:
        ckpt_bytes = inject.du(self.out / "reference" / "checkpoints" / f"step_{EVERY:07d}")
        work = self.out / "disk_full"
        work.mkdir(parents=True)
        mounted = self.mount and inject.mount_tmpfs(work, int(ckpt_bytes * 1.6) + (256 << 10))
        if mounted:  # room for the step-3 checkpoint, not for step 6 next to it
            result = self.train(work)
        else:  # not allowed to mount: a file-size limit on the running process once step 3 is saved
            result = self._train_with_fsize_limit(work, 64 << 10)
        try:
            said = "no space left on device" in result.stderr and "step_0000006.tmp" in result.stderr
            kept = sorted(p.name for p in (work / "checkpoints").iterdir()) if (work / "checkpoints").is_dir() else []
            moved = self.out / "disk_full_moved"  # the user frees space: here, the run dir moves to a bigger disk
            shutil.rmtree(moved, ignore_errors=True)
            shutil.copytree(work, moved)
        finally:
            if mounted:
                subprocess.run(["umount", str(work)], check=False)
        how = "tmpfs" if mounted else "RLIMIT_FSIZE"
        self.resume_check(
            "disk full",
            moved,
            result.returncode != 0 and said and kept == ["step_0000003"],
            f"{how}: rc {result.returncode}, error names the path: {said}, left {kept}"
            + ("" if said else inject.tail(result)),
            [3],
        )
        if mounted:  # a disk that cannot hold one checkpoint is refused before step 1
            tiny = self.out / "disk_too_small"
            inject.mount_tmpfs(tiny, int(ckpt_bytes * 0.5))
            try:
                result = self.train(tiny)
                refused = result.returncode != 0 and "no space left on device for a checkpoint" in result.stderr
                self.record(
                    "disk too small for one checkpoint",
                    refused and not inject.losses(tiny),
                    False,
                    "refused before step 1" if refused else inject.tail(result),
                )
            finally:
                subprocess.run(["umount", str(tiny)], check=False)

    def _train_with_fsize_limit(self, work: Path, limit: int) -> subprocess.CompletedProcess:
        import resource

        proc = self.start(self.command(work, {"sleep": 0.5, "ignore_sigxfsz": True}, {}, None, 1), work)
        deadline = time.time() + RUN_TIMEOUT
        while not (work / "checkpoints" / "step_0000003").is_dir() and proc.poll() is None and time.time() < deadline:
            time.sleep(0.05)
        if proc.poll() is None:
            resource.prlimit(proc.pid, resource.RLIMIT_FSIZE, (limit, limit))
        return self.finish(proc)

    def unwritable_work_dir(self) -> None:
        blocker = self.out / "not_a_dir"
        blocker.write_text("a file where the run's parent directory should be")
        result = self.train(blocker / "run")
        said = "is not writable" in result.stderr and str(blocker) in result.stderr
        self.record(
            "unwritable work dir",
            result.returncode != 0 and said,
            False,
            "refused before step 1, naming the path" if said else inject.tail(result),
        )

    def nan_losses(self) -> None:
        work = self.out / "nan_skipped"
        result = self.train(work, spec={"nan_steps": [2, 5]})
        losses, skips = inject.losses(work), inject.last_metric(work, "nan_skipped")
        finite = all(x == x for x in losses)
        skipped = result.returncode == 0 and skips == 2 and finite and len(losses) == STEPS
        self.record(
            "non-finite losses (2 steps)",
            skipped,
            False,
            f"rc {result.returncode}, {skips} attempts skipped (2 injected), {len(losses)} finite steps logged",
        )
        work = self.out / "nan_abort"
        result = self.train(work, spec={"nan_steps": [7, 8]}, options={"train.max_nan_steps": 2})
        aborted = result.returncode != 0 and "2 consecutive" in result.stderr
        self.resume_check("non-finite losses (persistent)", work, aborted, "aborted at 2 NaN steps in a row", [3, 6])

    def bad_features(self) -> None:
        import numpy as np

        data = self.out / "bad_data"
        shutil.rmtree(data, ignore_errors=True)
        shutil.copytree(self.out / "data", data, ignore=shutil.ignore_patterns("images", "edges"))
        entries = [e["path"] for e in json.loads((data / "data_info.json").read_text())]
        truncated, garbage, deleted, wrong = (
            inject.feature_file(data, entries[1], "vae_features_32/*.npy"),
            inject.feature_file(data, entries[2], "caption_features/*.npz"),
            inject.feature_file(data, entries[3], "vae_features_32/*.npy"),
            inject.feature_file(data, entries[4], "vae_features_32/*.npy"),
        )
        truncated.write_bytes(truncated.read_bytes()[: truncated.stat().st_size // 2])
        garbage.write_bytes(os.urandom(garbage.stat().st_size))
        deleted.unlink()
        work = self.out / "bad_features"
        result = self.train(work, options={"data.root": str(data)})
        log = (work / "train.log").read_text() if (work / "train.log").is_file() else ""
        files = (truncated, garbage, deleted)
        named = [f.name for f, entry in zip(files, entries[1:4]) if f.name in log or entry in log]
        ok = result.returncode == 0 and len(named) == 3 and len(inject.losses(work)) == STEPS
        self.record(
            "truncated / corrupt / deleted features",
            ok,
            False,
            f"rc {result.returncode}, skipped and named in train.log: {named}",
        )
        np.save(wrong, np.zeros((3, 2, 2), dtype=np.float32))
        result = self.train(self.out / "wrong_shape_features", options={"data.root": str(data)})
        said = result.returncode != 0 and (wrong.name in result.stderr or entries[4] in result.stderr)
        self.record("wrong-shape feature", said, False, "error names the file" if said else inject.tail(result))

    def victim(self) -> Path:
        """A run dir holding the reference's step-3 checkpoint, for faults that must not touch finished work."""
        work = self.out / "victim"
        shutil.rmtree(work, ignore_errors=True)
        (work / "checkpoints").mkdir(parents=True)
        shutil.copytree(self.out / "reference" / "checkpoints" / "step_0000003", work / "checkpoints" / "step_0000003")
        lines = (self.out / "reference" / "metrics.jsonl").read_text().splitlines()[:3]
        (work / "metrics.jsonl").write_text("".join(line + "\n" for line in lines))  # the log of steps 1-3
        return work

    def config_and_checkpoint_errors(self) -> None:
        """Misspelt keys, a wrong-architecture checkpoint and a .pth carrying code, each against a run dir with a
        finished checkpoint; afterwards that run resumes and equals the reference."""
        import torch

        from diffusion.engine import checkpoint as ckpt

        work = self.victim()
        marker = self.out / "code_was_executed"
        evil = self.out / "evil.pth"
        torch.save({"state_dict": inject.CodeCarrier(str(marker))}, evil)
        other = self.out / "other_arch"
        shutil.copytree(
            work / "checkpoints" / "step_0000003", other / "checkpoints" / "step_0000003", dirs_exist_ok=True
        )
        weights = ckpt.load_tensors(other / "checkpoints" / "step_0000003" / "model.safetensors")
        weights = {k: torch.zeros(*v.shape[:-1], v.shape[-1] + 1) if v.ndim == 2 else v for k, v in weights.items()}
        ckpt.save_tensors(other / "checkpoints" / "step_0000003" / "model.safetensors", weights)
        evil_ckpt = self.out / "evil_ckpt" / "checkpoints" / "step_0000003"
        shutil.copytree(work / "checkpoints" / "step_0000003", evil_ckpt, dirs_exist_ok=True)
        shutil.copy(evil, evil_ckpt / "training_state.pt")
        cases = [
            ("misspelt train key", {"train.max_step": 5}, None, "max_step"),
            ("misspelt codec key", {"codec.scale_factr": 1.0}, None, "scale_factr"),
            ("misspelt text_encoder key", {"text_encoder.pth": "x"}, None, "pth"),
            ("wrong-architecture checkpoint", {}, str(other / "checkpoints" / "step_0000003"), "does not fit"),
            (".pth carrying code as load_from", {"load_from": str(evil)}, None, "weights_only"),
            (".pth carrying code as a resume state", {}, str(evil_ckpt), "never code"),
        ]
        before = inject.hashes(work / "checkpoints" / "step_0000003")
        outcomes = []
        for name, options, resume, needle in cases:
            result = _in_process(self.env, self.out / "config.py", work, options, resume or "auto")
            intact = inject.hashes(work / "checkpoints" / "step_0000003") == before
            outcomes.append((name, needle in result and not marker.exists(), intact, result))
        lost, detail = self.verify_resume(work, [3])  # then the run dir still resumes, exactly
        for name, said, intact, result in outcomes:
            what = "refused, naming it" if said else result[-400:]
            self.record(name, said, lost or not intact, f"{what}; {'' if intact else 'checkpoint CHANGED; '}{detail}")


def _in_process(env: dict, config: Path, work: Path, options: dict, resume: str) -> str:
    """Run train.py's main in this process; returns the error text ('' when it trained)."""
    from mmengine.config import Config

    from diffusion.engine import Trainer

    os.environ.update({k: env[k] for k in ("WANDB_MODE", "HF_HUB_OFFLINE")})
    cfg = Config.fromfile(str(config))
    try:
        cfg.merge_from_dict(options)
        Trainer(cfg, work, resume=resume)
    except Exception as error:  # the drill wants the message, whatever the type
        return f"{type(error).__name__}: {error}"
    return ""


SCENARIOS = (
    "sigkill_mid_run",
    "sigkill_mid_checkpoint",
    "sigterm",
    "torchrun_rank_killed",
    "disk_full",
    "unwritable_work_dir",
    "nan_losses",
    "bad_features",
    "config_and_checkpoint_errors",
)


def run(out: Path, only: list[str] | None = None, mount: bool = True) -> tuple[int, int, int]:
    """Run the drill (or the ``only`` scenarios) under ``out``; returns (injected, survived, lost).
    ``mount=False``: simulate the full disk with a file-size limit even where a tmpfs could be mounted."""
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    drill = Drill(out, mount)
    drill.prepare()
    drill.reference()
    for name in only or SCENARIOS:
        getattr(drill, name)()
    injected = len(drill.results)
    survived = sum(1 for _, ok, lost, _ in drill.results if ok and not lost)
    lost = sum(1 for _, _, lost, _ in drill.results if lost)
    print(f"faults injected: {injected}, survived: {survived}, data lost: {lost}")
    return injected, survived, lost


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="output/fault_drill", help="scratch dir (deleted first)")
    parser.add_argument("--only", default=None, help=f"comma-separated subset of {','.join(SCENARIOS)}")
    parser.add_argument("--no-mount", action="store_true", help="disk full by RLIMIT_FSIZE, not a tmpfs")
    args = parser.parse_args(argv)
    only = args.only.split(",") if args.only else None
    unknown = sorted(set(only or ()) - set(SCENARIOS))
    if unknown:
        parser.error(f"unknown scenario(s) {unknown}; known: {list(SCENARIOS)}")
    injected, survived, lost = run(Path(args.out).resolve(), only, mount=not args.no_mount)
    sys.exit(0 if survived == injected and lost == 0 else 1)


if __name__ == "__main__":
    main()
