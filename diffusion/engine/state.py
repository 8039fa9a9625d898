"""The state of a training run, besides the network's weights, as one object (PixArt-δ §3.3 runs are resumed many
times, so everything that moves during training must come back exactly).

:class:`TrainState` holds the loop's counters and refers to every stateful part of the run: optimizer, lr schedule,
GradScaler, EMA, the method's extra state (LCM's target network), the data position and the RNG streams.
``state_dict()`` / ``load_state_dict()`` move all of it at once; :class:`~diffusion.engine.checkpointer.Checkpointer`
maps the dict to the files of a checkpoint folder. What comes from the checkpoint and what from the config on resume:
:mod:`diffusion.engine.resume`.
"""

import torch
from torch import nn

from diffusion.engine import checkpoint as ckpt
from diffusion.engine import parallel
from diffusion.engine import resume as on_resume
from diffusion.engine.ema import EMA


class TrainState:
    """Counters of the loop and the stateful parts of a run.

    Counters: ``step`` (optimizer steps done: skipped steps do not count), ``nan_total`` (steps skipped as divergence:
    a non-finite loss, or non-finite gradients without a GradScaler), ``overflow_total`` (fp16 steps the GradScaler
    skipped while finding its scale) and ``nan_streak`` (skipped steps in a row; not saved: a resumed run starts a new
    streak).

    Args:
        model: the trained network, unwrapped; its trainable names reduce the EMA to what a checkpoint keeps, and under
            FSDP the optimizer state is gathered / scattered through it.
        optimizer, lr_scheduler, scaler: the run's (the scaler disabled unless fp16).
        ema: the EMA of the trained weights, or None.
        method: the training method (``extra_state()`` / ``load_extra_state()``).
        data: the data source (``diffusion.engine.data_source``: its ``state_dict()`` is the data position, a
            collective for a shard stream).
        generator: this rank's noise generator (its state is part of the RNG streams).
        run_record: this run's settings (:func:`~diffusion.engine.resume.run_record`): saved, and on load the saved
            record is set against it (the config's lr is applied; the data position follows a changed per-step batch).
    """

    def __init__(
        self,
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        lr_scheduler: torch.optim.lr_scheduler.LambdaLR,
        scaler: torch.amp.GradScaler,
        ema: EMA | None,
        method: nn.Module,
        data,
        generator: torch.Generator,
        run_record: dict,
    ) -> None:
        self.model, self.optimizer, self.lr_scheduler, self.scaler = model, optimizer, lr_scheduler, scaler
        self.ema, self.method, self.data, self.generator = ema, method, data, generator
        self.run_record = run_record
        self.step = self.nan_total = self.overflow_total = self.nan_streak = 0

    def state_dict(self) -> dict:
        """``{"training": ..., "method": tensors, "ema": tensors (only with an EMA), "rng": this rank's streams}``.

        ``training`` holds step, optimizer, scaler, lr_scheduler, data, nan_total, overflow_total, world_size and run
        (Python values and tensors: loadable with ``weights_only``). The EMA keeps only the trainable names (the frozen
        rest equals the frozen weights, which come from the config's ``weights.base``). Collective under FSDP (the EMA,
        optimizer and method tensors are gathered whole, so a checkpoint does not depend on the world size; a shard
        stream gathers every rank's position).
        """
        state = {
            "training": {
                "step": self.step,
                "optimizer": parallel.optimizer_state_dict(self.model, self.optimizer),
                "scaler": self.scaler.state_dict(),
                "lr_scheduler": self.lr_scheduler.state_dict(),
                "data": self.data.state_dict(),
                "nan_total": self.nan_total,
                "overflow_total": self.overflow_total,
                "world_size": self.run_record["world_size"],
                "run": self.run_record,
            },
            "method": self.method.extra_state(),
            "rng": ckpt.rng_state(self.generator),
        }
        if self.ema is not None:
            state["ema"] = ckpt.trainable_only(self.model, self.ema.state_dict())
        return state

    def load_state_dict(self, state: dict) -> None:
        """Restore :meth:`state_dict` output. ``rng`` may be None (another world size, no file for this rank): the
        streams then stay as seeded. ``ema`` may hold only the trainable names. The config's lr replaces the saved
        one at the saved schedule position; the data source takes its position with the saved and current run
        records (a feature dataset's is rescaled to another per-step batch; what it had to say is in
        ``data.notes``)."""
        training = state["training"]
        self.step, self.nan_total = training["step"], training["nan_total"]
        self.overflow_total = training.get("overflow_total", 0)  # checkpoints before fp16 overflows were counted apart
        parallel.load_optimizer_state_dict(self.model, self.optimizer, training["optimizer"])
        self.scaler.load_state_dict(training["scaler"])
        self.lr_scheduler.load_state_dict(training["lr_scheduler"])
        on_resume.apply_lr(self.optimizer, self.lr_scheduler, self.run_record["lr"])  # the config's lr
        saved = on_resume.saved_record(training)
        self.data.load_state_dict(training["data"], saved, self.run_record)
        if self.ema is not None:  # frozen entries of the shadow are copies of the (loaded) frozen weights
            self.ema.load_state_dict({**self.ema.state_dict(), **state["ema"]})
        self.method.load_extra_state(state["method"])
        if state.get("rng") is not None:
            ckpt.set_rng_state(state["rng"], self.generator)
