"""The fault drill's shard scenarios (issue 19 item 5): the drill's dataset as WebDataset shards, trained with
on-the-fly encoding and 2 loader workers by ``configs/pixart/tiny_teacher_shards.py`` (shrunk like the drill's
feature config), against an uninterrupted shard reference run:

- a SIGKILL mid-epoch: the resume from the last checkpoint sees the same samples in the same order, so its losses
  and final weights equal the reference's;
- a SIGTERM to the whole process group (torchrun's, ``scancel``'s, Ctrl-C's way), loader workers included: the run
  saves the step it stops at and exits 0, and its resume equals the reference;
- a corrupt shard member (an image's bytes overwritten): skipped, named (shard and key) in ``train.log``, and the
  run trains all its steps;
- a missing shard: reported by name in ``train.log``, the run trains all its steps on the others.
"""

import io
import os
import shutil
import signal
import tarfile
import time
from pathlib import Path

from diffusion.drill import probes
from diffusion.drill.runner import OVERRIDES, RUN_TIMEOUT, STEPS, Drill
from diffusion.paths import repo_path

PER_SHARD = 8  # 48 samples: 6 shards, 3 per loader worker; batches of 8: 6 an epoch, so the drill's 8 steps cross one
WORKERS = 2


def shard_reference(drill: Drill) -> tuple[Path, Path]:
    """The drill's shards (``out/shards``), their config (``out/shards_config.py``) and the uninterrupted reference run
    (``out/reference_shards``), made once per drill; returns (config, reference run dir)."""
    from mmengine.config import Config

    from diffusion.data.shards import make_shards

    config, ref = drill.out / "shards_config.py", drill.out / "reference_shards"
    if (ref / "metrics.jsonl").is_file():
        return config, ref
    make_shards(drill.out / "data", drill.out / "shards", per_shard=PER_SHARD, progress=False)
    cfg = Config.fromfile(str(repo_path("configs/pixart/tiny_teacher_shards.py")))
    urls = str(drill.out / "shards" / "{00000..00005}.tar")
    t5 = str(drill.out / "t5")
    cfg.merge_from_dict({**OVERRIDES, "train.num_workers": WORKERS, "data.urls": urls, "text_encoder.path": t5})
    cfg.validation.sampler = {"name": "ddim", "steps": 2, "cfg_scale": 1.0}  # a base None takes no dict merge
    cfg.dump(str(config))
    result = drill.train(ref, options={"checkpoint.keep_last": 0}, config=config)
    if result.returncode != 0 or len(probes.losses(ref)) != STEPS:
        raise SystemExit(f"the shard reference run failed:\n{probes.tail(result)}")
    return config, ref


def shard_kill_mid_epoch(drill: Drill) -> None:
    """SIGKILL as step 5 starts (mid-epoch 0, its readers' buffers and buckets full): a resume from step 3 equals the
    shard reference."""
    config, ref = shard_reference(drill)
    work = drill.out / "shard_kill_mid_epoch"
    result = drill.train(work, spec={"kill_at_step": 5}, config=config)
    killed = result.returncode == -signal.SIGKILL
    cause = f"shards, 2 loader workers: killed at step 5 of a 6-batch epoch (rc {result.returncode})"
    drill.resume_check("shards: SIGKILL mid-epoch", work, killed, cause, [3], ref=ref, config=config)


def shard_sigterm_group(drill: Drill) -> None:
    """SIGTERM to the run's whole process group once 4 steps are logged (0.5 s a step), as torchrun (``os.killpg``
    on each rank), ``scancel`` and Ctrl-C send it: the loader workers get it too and must leave it to the trainer,
    which saves the step it stops at and exits 0; a resume equals the shard reference."""
    config, ref = shard_reference(drill)
    work = drill.out / "shard_sigterm_group"
    proc = drill.start(drill.command(work, {"sleep": 0.5}, {}, None, 1, config), work, new_session=True)
    deadline = time.time() + RUN_TIMEOUT
    while len(probes.losses(work)) < 4 and proc.poll() is None and time.time() < deadline:
        time.sleep(0.1)
    os.killpg(proc.pid, signal.SIGTERM)
    result = drill.finish(proc)
    stopped_at = len(probes.losses(work))
    saved = (work / "checkpoints" / f"step_{stopped_at:07d}").is_dir()
    log = (work / "train.log").read_text() if (work / "train.log").is_file() else ""
    ok = result.returncode == 0 and saved and "stopped by SIGTERM" in log
    cause = f"group SIGTERM, 2 loader workers: rc {result.returncode}, checkpoint at stop step {stopped_at}: {saved}"
    cause += "" if ok else f" ({probes.tail(result)})"
    drill.resume_check("shards: SIGTERM to the process group", work, ok, cause, [stopped_at], ref=ref, config=config)


def _corrupt_member(src: Path, dst: Path) -> str:
    """Copy shard ``src`` to ``dst`` with the image bytes of its first sample overwritten; returns that key."""
    with tarfile.open(src) as tar:
        members = [(m, tar.extractfile(m).read()) for m in tar.getmembers()]
    key = members[0][0].name.split(".", 1)[0]
    with tarfile.open(dst, "w") as out:
        for member, data in members:
            if member.name.startswith(key + ".") and member.name.endswith(".png"):
                data = b"\x89PNG garbage where the image was" + bytes(len(data))
                member.size = len(data)
            out.addfile(member, io.BytesIO(data))
    return key


def _shard_copy(drill: Drill, name: str) -> Path:
    folder = drill.out / name
    shutil.rmtree(folder, ignore_errors=True)
    shutil.copytree(drill.out / "shards", folder)
    return folder


def _damaged_shards_run(drill: Drill, name: str, damage, label: str) -> None:
    """Train the shard reference on a copy of its shards that ``damage(folder)`` spoiled; ``damage`` returns the line
    train.log must hold and what the record says was named. Passes when the run trains every step and names it."""
    config, _ = shard_reference(drill)
    folder = _shard_copy(drill, f"shards_{name}")
    expected, what = damage(folder)
    work = drill.out / f"shard_{name}"
    result = drill.train(work, options={"data.urls": str(folder / "{00000..00005}.tar")}, config=config)
    log = (work / "train.log").read_text() if (work / "train.log").is_file() else ""
    named = expected in log
    ok = result.returncode == 0 and named and len(probes.losses(work)) == STEPS
    drill.record(
        label,
        ok,
        False,
        f"rc {result.returncode}, {len(probes.losses(work))} steps, {what}: {named}"
        + ("" if ok else f" ({probes.tail(result)})"),
    )


def shard_corrupt_member(drill: Drill) -> None:
    """One sample's image bytes overwritten in shard 00002: skipped, named in train.log, every step trained."""

    def damage(folder: Path) -> tuple[str, str]:
        key = _corrupt_member(drill.out / "shards" / "00002.tar", folder / "00002.tar")
        return f"skipped {folder / '00002.tar'} {key}", f"00002.tar {key} named in train.log"

    _damaged_shards_run(drill, "corrupt_member", damage, "shards: corrupt member")


def shard_missing(drill: Drill) -> None:
    """Shard 00004 deleted: reported by name in train.log, the run trains every step on the other five."""

    def damage(folder: Path) -> tuple[str, str]:
        (folder / "00004.tar").unlink()
        return f"skipped {folder / '00004.tar'}: missing shard", "00004.tar named missing in train.log"

    _damaged_shards_run(drill, "missing", damage, "shards: missing shard")


SHARD_SCENARIOS = {
    "shard_kill_mid_epoch": shard_kill_mid_epoch,
    "shard_sigterm_group": shard_sigterm_group,
    "shard_corrupt_member": shard_corrupt_member,
    "shard_missing": shard_missing,
}
