"""The fault drill's scenarios (``tools/fault_drill.py``): each injects its faults into training runs of a
:class:`~diffusion.drill.runner.Drill` and records per fault whether it was survived and whether anything finished was
lost. :func:`run` runs the drill: the reference run, then the scenarios of :data:`SCENARIOS` (or some of them). The
shard scenarios (training from WebDataset shards) are :mod:`diffusion.drill.shard_scenarios`.
"""

import json
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

from diffusion.drill import probes
from diffusion.drill.runner import EVERY, RUN_TIMEOUT, STEPS, Drill, checkpoint_dir
from diffusion.drill.shard_scenarios import SHARD_SCENARIOS


def sigkill_mid_run(drill: Drill) -> None:
    """SIGKILL as step 5 starts: the step-3 checkpoint is kept and a resume equals the reference."""
    work = drill.out / "sigkill_mid_run"
    result = drill.train(work, spec={"kill_at_step": 5})
    killed = result.returncode == -signal.SIGKILL
    drill.resume_check("SIGKILL mid-run", work, killed, f"killed at step 5 (rc {result.returncode})", [3])


def sigkill_mid_checkpoint(drill: Drill) -> None:
    """SIGKILL after the first file of step 6's checkpoint: the half-written ``.tmp`` is ignored and a resume from
    step 3 equals the reference."""
    work = drill.out / "sigkill_mid_checkpoint"
    result = drill.train(work, spec={"kill_in_save": 6})
    half = checkpoint_dir(work, 6, tmp=True).is_dir() and not checkpoint_dir(work, 6).exists()
    drill.resume_check(
        "SIGKILL mid-checkpoint-write",
        work,
        result.returncode == -signal.SIGKILL and half,
        f"killed after writing one file of step 6 (a half-written {checkpoint_dir(work, 6, tmp=True).name}, ignored)",
        [3],
    )


def sigterm(drill: Drill) -> None:
    """SIGTERM from outside once 4 steps are logged (0.5 s a step): the run saves the step it stops at and exits 0;
    a resume equals the reference."""
    work = drill.out / "sigterm"
    proc = drill.start(drill.command(work, {"sleep": 0.5}, {}, None, 1), work)
    deadline = time.time() + RUN_TIMEOUT
    while len(probes.losses(work)) < 4 and proc.poll() is None and time.time() < deadline:
        time.sleep(0.1)
    proc.send_signal(signal.SIGTERM)
    result = drill.finish(proc)
    stopped_at = len(probes.losses(work))
    saved = checkpoint_dir(work, stopped_at).is_dir()
    log = (work / "train.log").read_text() if (work / "train.log").is_file() else ""
    ok = result.returncode == 0 and saved and "stopped by SIGTERM" in log
    cause = f"rc {result.returncode}, checkpoint at stop step {stopped_at}: {saved}"
    drill.resume_check("SIGTERM", work, ok, cause + ("" if ok else f" ({probes.tail(result)})"), [stopped_at])


def torchrun_rank_killed(drill: Drill) -> None:
    """Under 2-rank torchrun: rank 1 SIGKILLed at step 5 (torchrun restarts the group, which resumes by itself),
    then SIGTERM to rank 1 alone in step 4 (both ranks save it and exit); both equal a 2-rank reference."""
    ref = drill.out / "reference_2ranks"
    first = drill.train(ref, ranks=2)
    work = drill.out / "torchrun_rank_killed"
    result = drill.train(work, spec={"kill_at_step": 5, "rank": 1}, resume="auto", ranks=2)
    log = (work / "train.log").read_text() if (work / "train.log").is_file() else ""
    restarted = result.returncode == 0 and f"resumed from {checkpoint_dir(work, 3)}" in log
    if first.returncode != 0:
        same, detail = False, f"the 2-rank reference failed: {probes.tail(first)}"
    elif result.returncode != 0:
        same, detail = False, probes.tail(result, 1500)
    else:
        same, detail = drill.same_as_reference(work, ref)
    kept = checkpoint_dir(work, 6).is_dir()
    drill.record(
        "rank killed under torchrun --max-restarts 1",
        restarted,
        not (same and kept),
        f"rank 1 SIGKILLed at step 5, rc {result.returncode}, restarted and resumed by itself: {detail}",
    )
    work = drill.out / "torchrun_sigterm_one_rank"
    result = drill.train(work, spec={"kill_at_step": 4, "signal": "SIGTERM", "rank": 1}, ranks=2)
    both = result.returncode == 0 and checkpoint_dir(work, 4).is_dir()
    cause = f"SIGTERM to rank 1 only in step 4: rc {result.returncode}, both ranks saved step 4 and exited: {both}"
    drill.resume_check("SIGTERM to one rank under torchrun", work, both, cause, [4], ref=ref, ranks=2)


def disk_full(drill: Drill) -> None:
    """Room for one checkpoint (a tmpfs, else a file-size limit): the step-6 save fails naming its path, step 3 is
    kept and the run dir, moved to a bigger disk, resumes exactly; on a tmpfs too small for one checkpoint the run is
    refused before step 1."""
    ckpt_bytes = probes.du(checkpoint_dir(drill.out / "reference", EVERY))
    work = drill.out / "disk_full"
    work.mkdir(parents=True)
    mounted = drill.mount and probes.mount_tmpfs(work, int(ckpt_bytes * 1.6) + (256 << 10))
    if mounted:  # room for the step-3 checkpoint, not for step 6 next to it
        result = drill.train(work)
    else:  # not allowed to mount: a file-size limit on the running process once step 3 is saved
        result = _train_with_fsize_limit(drill, work, 64 << 10)
    try:
        said = "no space left on device" in result.stderr and checkpoint_dir(work, 6, tmp=True).name in result.stderr
        kept = sorted(p.name for p in (work / "checkpoints").iterdir()) if (work / "checkpoints").is_dir() else []
        moved = drill.out / "disk_full_moved"  # the user frees space: here, the run dir moves to a bigger disk
        shutil.rmtree(moved, ignore_errors=True)
        shutil.copytree(work, moved)
    finally:
        if mounted:
            subprocess.run(["umount", str(work)], check=False)
    how = "tmpfs" if mounted else "RLIMIT_FSIZE"
    drill.resume_check(
        "disk full",
        moved,
        result.returncode != 0 and said and kept == [checkpoint_dir(work, 3).name],
        f"{how}: rc {result.returncode}, error names the path: {said}, left {kept}"
        + ("" if said else probes.tail(result)),
        [3],
    )
    if mounted:  # a disk that cannot hold one checkpoint is refused before step 1
        tiny = drill.out / "disk_too_small"
        probes.mount_tmpfs(tiny, int(ckpt_bytes * 0.5))
        try:
            result = drill.train(tiny)
            refused = result.returncode != 0 and "no space left on device for a checkpoint" in result.stderr
            drill.record(
                "disk too small for one checkpoint",
                refused and not probes.losses(tiny),
                False,
                "refused before step 1" if refused else probes.tail(result),
            )
        finally:
            subprocess.run(["umount", str(tiny)], check=False)


def _train_with_fsize_limit(drill: Drill, work: Path, limit: int) -> subprocess.CompletedProcess:
    """Train in ``work`` (0.5 s a step), setting RLIMIT_FSIZE ``limit`` on it once its step-3 checkpoint exists."""
    import resource

    proc = drill.start(drill.command(work, {"sleep": 0.5, "ignore_sigxfsz": True}, {}, None, 1), work)
    deadline = time.time() + RUN_TIMEOUT
    while not checkpoint_dir(work, 3).is_dir() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    if proc.poll() is None:
        resource.prlimit(proc.pid, resource.RLIMIT_FSIZE, (limit, limit))
    return drill.finish(proc)


def unwritable_work_dir(drill: Drill) -> None:
    """A work dir under a file: refused before step 1, naming the path."""
    blocker = drill.out / "not_a_dir"
    blocker.write_text("a file where the run's parent directory should be")
    result = drill.train(blocker / "run")
    said = "is not writable" in result.stderr and str(blocker) in result.stderr
    drill.record(
        "unwritable work dir",
        result.returncode != 0 and said,
        False,
        "refused before step 1, naming the path" if said else probes.tail(result),
    )


def nan_losses(drill: Drill) -> None:
    """NaN losses in 2 of the steps are skipped and counted; 2 in a row with ``train.max_nan_steps=2`` abort the run,
    and a resume equals the reference."""
    work = drill.out / "nan_skipped"
    result = drill.train(work, spec={"nan_steps": [2, 5]})
    losses, skips = probes.losses(work), probes.last_metric(work, "nan_skipped")
    finite = all(x == x for x in losses)
    skipped = result.returncode == 0 and skips == 2 and finite and len(losses) == STEPS
    drill.record(
        "non-finite losses (2 steps)",
        skipped,
        False,
        f"rc {result.returncode}, {skips} attempts skipped (2 injected), {len(losses)} finite steps logged",
    )
    work = drill.out / "nan_abort"
    result = drill.train(work, spec={"nan_steps": [7, 8]}, options={"train.max_nan_steps": 2})
    aborted = result.returncode != 0 and "2 consecutive" in result.stderr
    drill.resume_check("non-finite losses (persistent)", work, aborted, "aborted at 2 NaN steps in a row", [3, 6])


def bad_features(drill: Drill) -> None:
    """Truncated, garbage and deleted feature files are skipped and named in train.log; a wrong-shape one is an error
    naming it."""
    import numpy as np

    data = drill.out / "bad_data"
    shutil.rmtree(data, ignore_errors=True)
    shutil.copytree(drill.out / "data", data, ignore=shutil.ignore_patterns("images", "edges"))
    entries = [e["path"] for e in json.loads((data / "data_info.json").read_text())]
    truncated, garbage, deleted, wrong = (
        probes.feature_file(data, entries[1], "vae_features_32/*.npy"),
        probes.feature_file(data, entries[2], "caption_features/*.npz"),
        probes.feature_file(data, entries[3], "vae_features_32/*.npy"),
        probes.feature_file(data, entries[4], "vae_features_32/*.npy"),
    )
    truncated.write_bytes(truncated.read_bytes()[: truncated.stat().st_size // 2])
    garbage.write_bytes(os.urandom(garbage.stat().st_size))
    deleted.unlink()
    work = drill.out / "bad_features"
    result = drill.train(work, options={"data.root": str(data)})
    log = (work / "train.log").read_text() if (work / "train.log").is_file() else ""
    files = (truncated, garbage, deleted)
    named = [f.name for f, entry in zip(files, entries[1:4]) if f.name in log or entry in log]
    ok = result.returncode == 0 and len(named) == 3 and len(probes.losses(work)) == STEPS
    drill.record(
        "truncated / corrupt / deleted features",
        ok,
        False,
        f"rc {result.returncode}, skipped and named in train.log: {named}",
    )
    np.save(wrong, np.zeros((3, 2, 2), dtype=np.float32))
    result = drill.train(drill.out / "wrong_shape_features", options={"data.root": str(data)})
    said = result.returncode != 0 and (wrong.name in result.stderr or entries[4] in result.stderr)
    drill.record("wrong-shape feature", said, False, "error names the file" if said else probes.tail(result))


def _victim(drill: Drill) -> Path:
    """A run dir holding the reference's step-3 checkpoint, for faults that must not touch finished work."""
    work = drill.out / "victim"
    shutil.rmtree(work, ignore_errors=True)
    (work / "checkpoints").mkdir(parents=True)
    shutil.copytree(checkpoint_dir(drill.out / "reference", 3), checkpoint_dir(work, 3))
    lines = (drill.out / "reference" / "metrics.jsonl").read_text().splitlines()[:3]
    (work / "metrics.jsonl").write_text("".join(line + "\n" for line in lines))  # the log of steps 1-3
    return work


def config_and_checkpoint_errors(drill: Drill) -> None:
    """Misspelt keys, a wrong-architecture checkpoint and a .pth carrying code, each against a run dir with a
    finished checkpoint; afterwards that run resumes and equals the reference."""
    import torch

    from diffusion.engine import checkpoint as ckpt

    work = _victim(drill)
    marker = drill.out / "code_was_executed"
    evil = drill.out / "evil.pth"
    torch.save({"state_dict": probes.CodeCarrier(str(marker))}, evil)
    other = drill.out / "other_arch"
    shutil.copytree(checkpoint_dir(work, 3), checkpoint_dir(other, 3), dirs_exist_ok=True)
    weights = ckpt.load_tensors(checkpoint_dir(other, 3) / "model.safetensors")
    weights = {k: torch.zeros(*v.shape[:-1], v.shape[-1] + 1) if v.ndim == 2 else v for k, v in weights.items()}
    ckpt.save_tensors(checkpoint_dir(other, 3) / "model.safetensors", weights)
    evil_ckpt = checkpoint_dir(drill.out / "evil_ckpt", 3)
    shutil.copytree(checkpoint_dir(work, 3), evil_ckpt, dirs_exist_ok=True)
    shutil.copy(evil, evil_ckpt / "training_state.pt")
    cases = [
        ("misspelt train key", {"train.max_step": 5}, None, "max_step"),
        ("misspelt codec key", {"codec.scale_factr": 1.0}, None, "scale_factr"),
        ("misspelt text_encoder key", {"text_encoder.pth": "x"}, None, "pth"),
        ("wrong-architecture checkpoint", {}, str(checkpoint_dir(other, 3)), "does not fit"),
        (".pth carrying code as weights.base", {"weights.base": str(evil)}, None, "weights_only"),
        (".pth carrying code as a resume state", {}, str(evil_ckpt), "never code"),
    ]
    before = probes.hashes(checkpoint_dir(work, 3))
    outcomes = []
    for name, options, resume, needle in cases:
        result = _in_process(drill.env, drill.out / "config.py", work, options, resume or "auto")
        intact = probes.hashes(checkpoint_dir(work, 3)) == before
        outcomes.append((name, needle in result and not marker.exists(), intact, result))
    lost, detail = drill.verify_resume(work, [3])  # then the run dir still resumes, exactly
    for name, said, intact, result in outcomes:
        what = "refused, naming it" if said else result[-400:]
        drill.record(name, said, lost or not intact, f"{what}; {'' if intact else 'checkpoint CHANGED; '}{detail}")


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


SCENARIOS = {  # name (as in --only) -> scenario, in the order the drill runs them
    "sigkill_mid_run": sigkill_mid_run,
    "sigkill_mid_checkpoint": sigkill_mid_checkpoint,
    "sigterm": sigterm,
    "torchrun_rank_killed": torchrun_rank_killed,
    "disk_full": disk_full,
    "unwritable_work_dir": unwritable_work_dir,
    "nan_losses": nan_losses,
    "bad_features": bad_features,
    "config_and_checkpoint_errors": config_and_checkpoint_errors,
    **SHARD_SCENARIOS,  # shard_kill_mid_epoch, shard_corrupt_member, shard_missing
}


def run(out: Path, only: list[str] | None = None, mount: bool = True) -> tuple[int, int, int]:
    """Run the drill (or the ``only`` scenarios) under ``out``; returns (injected, survived, lost).
    ``mount=False``: simulate the full disk with a file-size limit even where a tmpfs could be mounted."""
    unknown = sorted(set(only or ()) - set(SCENARIOS))
    if unknown:
        raise ValueError(f"unknown scenario(s) {unknown}; known: {list(SCENARIOS)}")
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    drill = Drill(out, mount)
    drill.prepare()
    drill.reference()
    for name in only or SCENARIOS:
        SCENARIOS[name](drill)
    injected = len(drill.results)
    survived = sum(1 for _, ok, lost, _ in drill.results if ok and not lost)
    lost = sum(1 for _, _, lost, _ in drill.results if lost)
    print(f"faults injected: {injected}, survived: {survived}, data lost: {lost}")
    return injected, survived, lost
