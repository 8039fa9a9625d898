"""Checkpoints of a whole run, as a mixin of :class:`diffusion.engine.trainer.Trainer`: weights, EMA, method state,
optimizer, GradScaler, lr schedule, data position and the RNG of every rank, written atomically
(``checkpoints/step_XXXXXXX``, see :mod:`diffusion.engine.checkpoint`) and restored so that a killed and resumed run
reproduces the uninterrupted one exactly on CPU.

Uses the trainer's ``work_dir``, ``step``, ``rank``, ``world``, ``model``, ``method``, ``ema``, ``optimizer``,
``scaler``, ``lr_scheduler``, ``lr``, ``stream``, ``generator``, ``nan_total``, ``run_record``, ``ckpt_cfg``,
``logger`` and its ``_notes``.
"""

from pathlib import Path

from diffusion.engine import checkpoint as ckpt
from diffusion.engine import dist, parallel
from diffusion.engine import resume as on_resume


class RunCheckpoint:
    """``save_checkpoint()`` and its inverse ``_load_state(dir)``."""

    def save_checkpoint(self) -> Path:
        """Write ``checkpoints/step_XXXXXXX`` atomically and prune old ones; collective under DDP/FSDP."""
        root = self.work_dir / ckpt.CHECKPOINT_SUBDIR
        tmp = ckpt.step_dir(root, self.step).with_suffix(".tmp")
        if dist.is_main():
            ckpt.begin_save(root, self.step)
        dist.barrier()
        unwrapped = parallel.unwrap(self.model)
        # a model with frozen parameters saves only its trainable ones; the frozen rest comes from cfg.load_from
        weights = {"model": ckpt.trainable_only(unwrapped, parallel.full_state_dict(unwrapped))}
        weights["method"] = self.method.extra_state()
        if self.ema is not None:
            weights["ema"] = ckpt.trainable_only(unwrapped, self.ema.state_dict())
        optimizer_state = parallel.optimizer_state_dict(unwrapped, self.optimizer)
        with ckpt.writing(tmp):  # a failed write leaves no .tmp; a full disk says so
            ckpt.save_object(tmp / f"rng_rank{self.rank}.pt", ckpt.rng_state(self.generator))
            if dist.is_main():
                for name, tensors in weights.items():
                    ckpt.save_tensors(tmp / f"{name}.safetensors", tensors)
                state = {
                    "step": self.step,
                    "optimizer": optimizer_state,
                    "scaler": self.scaler.state_dict(),
                    "lr_scheduler": self.lr_scheduler.state_dict(),
                    "data": self.stream.state_dict(),
                    "nan_total": self.nan_total,
                    "overflow_total": self.overflow_total,
                    "world_size": self.world,
                    "run": self.run_record,
                }
                ckpt.save_object(tmp / "training_state.pt", state)
        dist.barrier()
        final = ckpt.step_dir(root, self.step)
        if dist.is_main():
            ckpt.commit(tmp)
            ckpt.prune(root, self.ckpt_cfg["keep_last"])
            self.logger.info(f"saved checkpoint {final}")
        dist.barrier()
        return final

    def _load_state(self, resume_dir: Path) -> None:
        state = ckpt.load_object(resume_dir / "training_state.pt")
        self.step, self.nan_total = state["step"], state["nan_total"]
        self.overflow_total = state.get("overflow_total", 0)  # checkpoints before fp16 overflows were counted apart
        parallel.load_optimizer_state_dict(parallel.unwrap(self.model), self.optimizer, state["optimizer"])
        self.scaler.load_state_dict(state["scaler"])
        self.lr_scheduler.load_state_dict(state["lr_scheduler"])
        on_resume.apply_lr(self.optimizer, self.lr_scheduler, self.lr)  # the config's lr, not the checkpoint's
        saved = on_resume.saved_record(state)
        self.stream.load_state_dict(on_resume.rescale_data_position(state["data"], saved, self.run_record))
        self._notes.append(("info", f"resumed from {resume_dir} at step {self.step}"))
        self._notes.append(
            ("info", f"from the checkpoint: {on_resume.FROM_CHECKPOINT}; from the config: {on_resume.FROM_CONFIG}")
        )
        self._notes += [("warning", note) for note in on_resume.changes(saved, self.run_record)]
        if self.ema is not None:  # frozen entries of the shadow are copies of the (loaded) frozen weights
            self.ema.load_state_dict({**self.ema.state_dict(), **ckpt.load_tensors(resume_dir / "ema.safetensors")})
        self.method.load_extra_state(ckpt.load_tensors(resume_dir / "method.safetensors"))
        rng_file = resume_dir / f"rng_rank{self.rank}.pt"
        if rng_file.is_file() and state["world_size"] == self.world:
            ckpt.set_rng_state(ckpt.load_object(rng_file), self.generator)
        else:
            self._notes.append(
                ("warning", f"no RNG state for rank {self.rank} of {self.world}: noise restarts from the seed")
            )
