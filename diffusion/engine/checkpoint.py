"""Checkpoints for the training loop (PixArt-α / PixArt-δ §3.3 runs are resumed many times, so a crash must never
leave a half-written checkpoint and a resumed run must continue exactly).

Layout of ``<work_dir>/checkpoints/step_XXXXXXX/``: ``model.safetensors``, ``ema.safetensors``,
``method.safetensors`` (``method.extra_state()``), ``training_state.pt`` (optimizer, grad scaler, lr schedule, step,
data position) and ``rng_rank{r}.pt`` per process. Everything loads with safetensors or
``torch.load(weights_only=True)``. A checkpoint is written into ``step_XXXXXXX.tmp``, fsynced and then renamed; a
failed write removes its ``.tmp`` (a full disk is reported as "no space left on device" naming the path, where
``torch.save`` itself only says ``unexpected pos`` or ``basic_ios::clear``) and a killed one's is removed by the next
save. Either way the previous checkpoint stays the latest.
"""

import errno
import os
import random
import re
import shutil
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from diffusion.model.io import describe_state

CHECKPOINT_SUBDIR = "checkpoints"
STEP_DIR = re.compile(r"^step_(\d+)$")
TMP_DIR = re.compile(r"^step_(\d+)\.tmp$")
# below this many free bytes after a failed write, the failure is taken to be the full disk (libtorch's writer loses
# the errno); a disk with more room than this failed for another reason and the original error is kept
FULL_DISK_MARGIN = 1 << 20
NO_SPACE_ERRNOS = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)


def step_name(step: int) -> str:
    """``step_XXXXXXX``: the name of a step's checkpoint folder (and of its sample grid, ``.png`` added); 7 digits, so
    names sort by step."""
    return f"step_{step:07d}"


def parse_step(name: str) -> int | None:
    """The step a checkpoint folder's name holds (``step_0005000`` -> 5000), None for any other name (a ``.tmp``)."""
    match = STEP_DIR.match(name)
    return int(match.group(1)) if match else None


def step_dir(root: str | os.PathLike, step: int) -> Path:
    """``root/step_XXXXXXX``, the checkpoint folder of ``step``."""
    return Path(root) / step_name(step)


def begin_save(root: str | os.PathLike, step: int) -> Path:
    """Create a fresh temporary directory for the checkpoint of ``step`` and return it; every stale ``.tmp`` of an
    interrupted save under ``root`` is removed first."""
    root = Path(root)
    if root.is_dir():
        for stale in root.iterdir():
            if stale.is_dir() and TMP_DIR.match(stale.name):
                shutil.rmtree(stale, ignore_errors=True)
    tmp = step_dir(root, step).with_suffix(".tmp")
    with writing(tmp):
        tmp.mkdir(parents=True)
    return tmp


def is_disk_full(error: BaseException, path: str | os.PathLike) -> bool:
    """Whether ``error``, raised while writing under ``path``, is a full disk / quota / file-size limit."""
    if isinstance(error, OSError) and error.errno in NO_SPACE_ERRNOS:
        return True
    if "no space left" in str(error).lower() or "file too large" in str(error).lower():
        return True
    existing = Path(path)
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    return shutil.disk_usage(existing).free < FULL_DISK_MARGIN


@contextmanager
def writing(tmp: str | os.PathLike) -> Iterator[Path]:
    """Context of writing checkpoint directory ``tmp``: on any error the directory is removed (the previous
    checkpoint stays the latest) and a full disk is re-raised as ``OSError(ENOSPC)`` naming ``tmp``."""
    tmp = Path(tmp)
    try:
        yield tmp
    except BaseException as error:
        full = isinstance(error, Exception) and is_disk_full(error, tmp)  # before the removal frees the space again
        shutil.rmtree(tmp, ignore_errors=True)
        if full:
            raise OSError(
                errno.ENOSPC,
                f"no space left on device writing checkpoint {tmp} (removed the partial checkpoint, the previous one "
                f"is kept): {type(error).__name__}: {error}",
            ) from error
        raise


def save_tensors(path: str | os.PathLike, tensors: dict[str, torch.Tensor]) -> None:
    """Write a flat dict of tensors as safetensors (moved to CPU, contiguous and unshared)."""
    save_file({k: v.detach().to("cpu").contiguous().clone() for k, v in tensors.items()}, str(path))


def save_object(path: str | os.PathLike, obj: dict) -> None:
    """``torch.save`` an object made only of tensors and Python primitives (loadable with ``weights_only``)."""
    torch.save(obj, path)


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def commit(tmp: Path) -> Path:
    """Flush every file of ``tmp`` to disk and atomically rename it to its final name; returns the final path."""
    for file in tmp.iterdir():
        _fsync(file)
    final = tmp.with_suffix("")
    shutil.rmtree(final, ignore_errors=True)
    os.replace(tmp, final)
    _fsync(final.parent)
    return final


def list_checkpoints(root: str | os.PathLike) -> list[Path]:
    """Completed checkpoints under ``root`` sorted by step (temporary ``.tmp`` directories are ignored)."""
    root = Path(root)
    if not root.is_dir():
        return []
    found = [p for p in root.iterdir() if p.is_dir() and parse_step(p.name) is not None]
    return sorted(found, key=lambda p: parse_step(p.name))


def prune(root: str | os.PathLike, keep_last: int) -> None:
    """Delete all but the ``keep_last`` newest checkpoints (``keep_last <= 0`` keeps everything)."""
    if keep_last > 0:
        for old in list_checkpoints(root)[:-keep_last]:
            shutil.rmtree(old)


def find_latest(work_dir: str | os.PathLike) -> Path | None:
    """Newest checkpoint folder of a run (committed by rename; its files are not checked), or None."""
    found = list_checkpoints(Path(work_dir) / CHECKPOINT_SUBDIR)
    return found[-1] if found else None


def find_resumable(work_dir: str | os.PathLike) -> tuple[Path | None, list[Path]]:
    """What ``--resume auto`` continues: the newest checkpoint holding its ``training_state.pt`` (or None), and the
    newer, incomplete folders passed over (a file deleted or copied in part), newest first."""
    skipped = []
    for step_dir in reversed(list_checkpoints(Path(work_dir) / CHECKPOINT_SUBDIR)):
        if (step_dir / "training_state.pt").is_file():
            return step_dir, skipped
        skipped.append(step_dir)
    return None, skipped


def load_tensors(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Read a safetensors file onto the CPU; a missing, truncated or corrupt file is an error naming it."""
    try:
        return load_file(str(path), device="cpu")
    except Exception as error:
        raise ValueError(f"cannot read checkpoint file {path}: {type(error).__name__}: {error}") from error


def trainable_only(model: torch.nn.Module, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """``state`` reduced to ``model``'s trainable parameters when it has frozen ones (a ControlNet's copies, LoRA):
    the frozen rest comes from the config's ``weights.base``, so a checkpoint does not repeat it."""
    names = {name for name, p in model.named_parameters() if p.requires_grad}
    if len(names) == sum(1 for _ in model.named_parameters()):
        return state
    return {k: v for k, v in state.items() if k in names}


def load_trainable(model: torch.nn.Module, state: dict[str, torch.Tensor], source: str | os.PathLike) -> None:
    """Load a state written through :func:`trainable_only`: every trainable parameter must be in it, nothing unknown.

    A full state dict loads as well (the frozen part is then overwritten with the same values)."""
    try:
        result = model.load_state_dict(state, strict=False)
    except RuntimeError as error:  # shape mismatches
        raise ValueError(
            f"checkpoint {source} does not fit the config's model (another architecture?): {error}"
        ) from error
    trainable = {name for name, p in model.named_parameters() if p.requires_grad}
    missing = sorted(k for k in result.missing_keys if k in trainable)
    if missing or result.unexpected_keys:
        raise KeyError(
            f"{source} holds {describe_state(state)}: missing trainable keys {missing}, unexpected keys "
            f"{sorted(result.unexpected_keys)}"
        )


def load_object(path: str | os.PathLike) -> dict:
    """Read a ``torch.save`` file with ``weights_only=True``: a file carrying code (pickled globals) is refused
    without running it, and any unreadable file is an error naming it."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:
        raise ValueError(
            f"cannot read checkpoint file {path} (only tensors and plain Python values are loaded, never code): "
            f"{type(error).__name__}: {error}"
        ) from error


def rng_state(generator: torch.Generator | None = None) -> dict:
    """RNG states of python, numpy, torch (CPU and current CUDA device) and ``generator``, as tensors and ints."""
    version, mt, gauss_next = random.getstate()
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    state = {
        "python_version": version,
        "python_mt": torch.tensor(mt, dtype=torch.int64),
        "python_gauss_next": gauss_next,
        "numpy_keys": torch.from_numpy(keys.astype(np.int64)),
        "numpy_pos": int(pos),
        "numpy_has_gauss": int(has_gauss),
        "numpy_cached_gaussian": float(cached),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state()
    if generator is not None:
        state["generator"] = generator.get_state()
    return state


def set_rng_state(state: dict, generator: torch.Generator | None = None) -> None:
    """Restore what :func:`rng_state` captured."""
    random.setstate((state["python_version"], tuple(state["python_mt"].tolist()), state["python_gauss_next"]))
    np.random.set_state(
        (
            "MT19937",
            state["numpy_keys"].numpy().astype(np.uint32),
            state["numpy_pos"],
            state["numpy_has_gauss"],
            state["numpy_cached_gaussian"],
        )
    )
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])
    if generator is not None and "generator" in state:
        generator.set_state(state["generator"])


def seed_everything(seed: int) -> None:
    """Seed python, numpy and torch (all devices)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def refuse_fresh_start(work_dir: str | os.PathLike) -> None:
    """A run started without resuming must not go into a dir that holds another run's checkpoints: it would restart
    at step 0, and pruning (``keep_last``) would then delete the older run's checkpoints, or its own next to a newer
    step. FileExistsError naming the dir and its latest checkpoint, before anything is written."""
    latest = find_latest(work_dir)
    if latest is not None:
        raise FileExistsError(
            f"work dir {work_dir} already holds checkpoints of a run (latest: {latest}): pass --resume auto "
            "(resume='auto') to continue it, or choose another --work-dir (or delete that one) to start afresh"
        )


def claim_run_dir(work_dir: str | os.PathLike, digest: str, on_other: str = "error") -> Path:
    """Make ``work_dir`` the run dir of whatever ``digest`` names (a config hash, a teacher file hash), so that
    ``--resume auto`` only ever continues a run of the same inputs.

    The digest is stamped in ``<work_dir>/run_sha256.txt``. A dir stamped with another digest, or unstamped but holding
    checkpoints, belongs to another run: ``on_other="error"`` raises SystemExit naming it, ``"move"`` renames it to
    ``<work_dir>.<old digest[:8]>.<unix time>`` (never deletes it) and starts fresh. Returns ``work_dir``.
    """
    if on_other not in ("error", "move"):
        raise ValueError(f"on_other must be 'error' or 'move', got {on_other!r}")
    work_dir = Path(work_dir)
    stamp = work_dir / "run_sha256.txt"
    old = stamp.read_text().strip() if stamp.is_file() else None
    foreign = old != digest if old is not None else find_latest(work_dir) is not None
    if foreign:
        what = f"a run of other inputs (sha256 {old[:8]})" if old else "checkpoints of an unknown run"
        if on_other == "error":
            raise SystemExit(f"{work_dir} holds {what}, not of {digest[:8]}; delete it or choose another work dir")
        stale = work_dir.with_name(f"{work_dir.name}.{(old or 'unknown')[:8]}.{int(time.time())}")
        work_dir.rename(stale)
        print(f"{work_dir} held {what}; moved it to {stale}")
    work_dir.mkdir(parents=True, exist_ok=True)
    stamp.write_text(digest + "\n")
    return work_dir
