"""The checkpoints of one run: which folder a run resumes from, writing ``checkpoints/step_XXXXXXX`` atomically and
reading it back, so that a killed and resumed run reproduces the uninterrupted one exactly on CPU (PixArt-δ §3.3
runs are resumed many times).

A folder holds the trainable weights (``model.safetensors``) and the files of a
:meth:`~diffusion.engine.state.TrainState.state_dict`: ``training_state.pt``, ``method.safetensors``,
``ema.safetensors`` and ``rng_rank{r}.pt`` per process (the layout: :mod:`diffusion.engine.checkpoint`).
"""

import os
from pathlib import Path

from torch import nn

from diffusion.engine import checkpoint as ckpt
from diffusion.engine import dist, parallel
from diffusion.engine import resume as on_resume
from diffusion.engine.metrics import MetricLogger
from diffusion.engine.state import TrainState


class Checkpointer:
    """Checkpoints under ``work_dir/checkpoints``.

    Args:
        work_dir: the run directory.
        keep_last: checkpoints kept after each save (``<= 0`` keeps all).
        logger: the run's logger (saves, resume notes and warnings).
    """

    def __init__(self, work_dir: str | os.PathLike, keep_last: int, logger: MetricLogger) -> None:
        self.work_dir, self.keep_last, self.logger = Path(work_dir), keep_last, logger
        self.root = self.work_dir / ckpt.CHECKPOINT_SUBDIR

    def resolve(self, resume: str | os.PathLike | None) -> Path | None:
        """The folder to resume from: None (a fresh start, refused when the work dir holds checkpoints), ``'auto'``
        (the newest complete checkpoint, if any; newer incomplete ones are named in a warning) or a folder, which
        must hold its ``training_state.pt``."""
        if resume is None:
            ckpt.refuse_fresh_start(self.work_dir)
            return None
        if resume != "auto":
            if not (Path(resume) / "training_state.pt").is_file():
                raise FileNotFoundError(f"no checkpoint at {resume} (no training_state.pt)")
            return Path(resume)
        found, skipped = ckpt.find_resumable(self.work_dir)
        for folder in skipped:
            self.logger.warning(f"{folder} is incomplete (no training_state.pt): not resumed from")
        return found

    def latest(self) -> Path | None:
        """The newest checkpoint folder of the run, or None."""
        return ckpt.find_latest(self.work_dir)

    @staticmethod
    def load_weights(resume_dir: Path, model: nn.Module) -> None:
        """The checkpoint's trainable weights into the unwrapped, unsharded ``model`` (before DDP / FSDP wrapping);
        with frozen parameters the rest is the config's ``weights.base``."""
        ckpt.load_trainable(model, ckpt.load_tensors(resume_dir / "model.safetensors"), resume_dir)

    def save(self, model: nn.Module, state: TrainState) -> Path:
        """Write ``checkpoints/step_XXXXXXX`` of ``state.step`` atomically and prune old ones; collective under
        DDP/FSDP. ``model``: the trained network, unwrapped."""
        rank = dist.rank()
        tmp = ckpt.step_dir(self.root, state.step).with_suffix(".tmp")
        if dist.is_main():
            ckpt.begin_save(self.root, state.step)
        dist.barrier()
        # a model with frozen parameters saves only its trainable ones; the frozen rest comes from weights.base
        weights = ckpt.trainable_only(model, parallel.full_state_dict(model))
        saved = state.state_dict()
        with ckpt.writing(tmp):  # a failed write leaves no .tmp; a full disk says so
            ckpt.save_object(tmp / f"rng_rank{rank}.pt", saved["rng"])
            if dist.is_main():
                ckpt.save_tensors(tmp / "model.safetensors", weights)
                for name in ("method", "ema"):
                    if name in saved:
                        ckpt.save_tensors(tmp / f"{name}.safetensors", saved[name])
                ckpt.save_object(tmp / "training_state.pt", saved["training"])
        dist.barrier()
        final = ckpt.step_dir(self.root, state.step)
        if dist.is_main():
            ckpt.commit(tmp)
            ckpt.prune(self.root, self.keep_last)
            self.logger.info(f"saved checkpoint {final}")
        dist.barrier()
        return final

    def load(self, resume_dir: Path, state: TrainState) -> None:
        """Restore ``state`` from ``resume_dir`` and say in the log what came from the checkpoint, what from the
        config, and every setting that changed since the checkpoint. This rank's RNG streams are restored when the
        checkpoint was written by as many processes (else they restart from the seed, with a warning)."""
        rank, world = dist.rank(), dist.world_size()
        training = ckpt.load_object(resume_dir / "training_state.pt")
        rng_file = resume_dir / f"rng_rank{rank}.pt"
        rng = ckpt.load_object(rng_file) if rng_file.is_file() and training["world_size"] == world else None
        saved = {"training": training, "method": ckpt.load_tensors(resume_dir / "method.safetensors"), "rng": rng}
        if state.ema is not None:
            saved["ema"] = ckpt.load_tensors(resume_dir / "ema.safetensors")
        try:
            state.load_state_dict(saved)
        except ValueError as error:  # e.g. a data position of another layout: say which checkpoint
            raise ValueError(f"resuming from {resume_dir}: {error}") from error
        self.logger.info(f"resumed from {resume_dir} at step {state.step}")
        for note in state.data.notes:
            self.logger.warning(note)
        self.logger.info(f"from the checkpoint: {on_resume.FROM_CHECKPOINT}; from the config: {on_resume.FROM_CONFIG}")
        for note in on_resume.changes(on_resume.saved_record(training), state.run_record):
            self.logger.warning(note)
        if rng is None:
            self.logger.warning(f"no RNG state for rank {rank} of {world}: noise restarts from the seed")
