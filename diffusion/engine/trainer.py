"""THE training loop, shared by the PixArt-α teacher, PixArt-δ LCM distillation (§3, Algorithm 1) and the
ControlNet-Transformer (§4): they differ only in the config's ``method``, which computes
``loss, logs = method(model, batch)``. The loop never branches on the method.

One optimizer step = ``grad_accum`` micro-steps (gradient all-reduce only on the last), mixed precision, gradient
clipping, lr schedule, then ``method.after_optimizer_step`` and the EMA update. A skipped step advances nothing
(weights, lr schedule, EMA, method state, step counter; only the data moves on): a non-finite loss, or non-finite
gradients without a GradScaler, is divergence (``train.max_nan_steps`` in a row stop the run); an fp16 step whose
scaled gradients overflow is the GradScaler finding its scale (reported; the run stops only when the scale falls
below ``train.loss_scale_min``). Checkpoints restore everything (weights and :class:`TrainState`: EMA, method state,
optimizer, scaler, lr schedule, data position, RNG), so a killed and resumed run reproduces the uninterrupted one
exactly on CPU.

The trainer's parts, each built with explicit arguments: the logger (first, so anything can log), the
:class:`Checkpointer`, the data source (:mod:`diffusion.engine.data_source`: cached features, or images and captions
encoded in the step by the frozen codec and text encoder), the :class:`Validator` (sample grids) and the
:class:`TrainState`.
"""

import math
import warnings
from contextlib import nullcontext
from pathlib import Path

import torch
from mmengine.config import Config

from diffusion.build import build_method, build_model
from diffusion.config import check_top_level, resolve_section
from diffusion.engine import checkpoint as ckpt
from diffusion.engine import dist, parallel, preflight
from diffusion.engine import resume as on_resume
from diffusion.engine.checkpointer import Checkpointer
from diffusion.engine.data_source import build_data_source
from diffusion.engine.ema import EMA
from diffusion.engine.metrics import MetricLogger, MetricWindow
from diffusion.engine.optim import build_lr_scheduler, build_optimizer, build_scaler, scaled_lr, scaled_step
from diffusion.engine.signals import StopSignal
from diffusion.engine.state import TrainState
from diffusion.engine.validation import Validator
from diffusion.protocols import FreezesNetworks

AMP_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


class Trainer:
    """Builds everything from a config and runs the loop.

    Parts: ``logger`` (:class:`MetricLogger`), ``checkpointer`` (:class:`Checkpointer`), ``data`` (the data source:
    ``FeatureBatches`` or ``EncodedBatches``, by what ``cfg.data``'s dataset yields), ``validator``
    (:class:`Validator`, None without a ``validation`` section) and ``state`` (:class:`TrainState`: the step counters
    and the optimizer, lr schedule, scaler, EMA, method state, data position and RNG a checkpoint restores).

    Args:
        cfg: mmengine ``Config`` (or plain dict) with the keys of ``diffusion.config.TOP_LEVEL_KEYS``.
        work_dir: run directory (checkpoints, logs, samples, dumped config).
        resume: None, ``'auto'`` (latest checkpoint of ``work_dir`` if any) or a checkpoint directory.
    """

    def __init__(self, cfg: Config | dict, work_dir: str | Path, resume: str | None = None) -> None:
        cfg = cfg if isinstance(cfg, Config) else Config(cfg)
        check_top_level(cfg)
        self.cfg, self.work_dir = cfg, Path(work_dir)
        self.train_cfg = resolve_section("train", cfg.train)
        self.lr_cfg = resolve_section("lr_schedule", cfg.get("lr_schedule"))
        self.ckpt_cfg = resolve_section("checkpoint", cfg.get("checkpoint"))
        self.log_cfg = resolve_section("log", cfg.get("log"))
        self.val_cfg = resolve_section("validation", cfg.validation) if cfg.get("validation") else None
        preflight.check_sections(cfg)  # text_encoder and codec keys, before anything is built
        preflight.check_weights(cfg)  # a teacher for a distilling method, null caption files of the model's shape
        fresh = not self.work_dir.exists()
        preflight.check_work_dir(self.work_dir)
        self.logger: MetricLogger | None = None
        try:
            self._build(resume)
        except BaseException:  # a run that fails to start leaves no empty run dir behind (a wrong weights.base, ...)
            if self.logger is not None:
                self.logger.close()
            if fresh:
                preflight.remove_if_empty(self.work_dir)
            raise

    @property
    def step(self) -> int:
        """Optimizer steps done (``state.step``)."""
        return self.state.step

    def _build(self, resume: str | None) -> None:
        """Everything after the config checks: logger, networks, method, parallel wrapping, validator, optimizer,
        data and the training state (restored when resuming); the work dir exists and is writable."""
        cfg, tc = self.cfg, self.train_cfg
        self.device = dist.init()
        self.rank, self.world = dist.rank(), dist.world_size()
        self.logger = MetricLogger(self.work_dir, dist.is_main())  # train.log opens at the first message
        self.checkpointer = Checkpointer(self.work_dir, self.ckpt_cfg["keep_last"], self.logger)
        resume_dir = self.checkpointer.resolve(resume)
        ckpt.seed_everything(tc["seed"])  # identical initial weights on every rank
        with warnings.catch_warnings(record=True) as caught:  # what loading the weights warns goes into train.log
            warnings.simplefilter("always")  # (e.g. KV-compression weights started from their init)
            model = build_model(cfg)  # cfg.model with weights.base (the one way in, shared with the tools)
        for warning in caught:
            self.logger.warning(f"{warning.category.__name__}: {warning.message}")
        self.method = build_method(cfg, model)  # under the config's diffusion process (the one way in)
        if resume_dir is not None:  # with frozen parameters, only the trainable ones (the rest is weights.base)
            self.checkpointer.load_weights(resume_dir, model)
        model.to(self.device)
        self.method.to(self.device)
        # the batches: cached features, or images and captions with the frozen codec and T5 that encode them
        self.data = build_data_source(cfg, tc, self.rank, self.world, self.device, self.logger)
        self.data.check_model(model)
        self.scale_factor = self.data.scale_factor
        # teacher / target, and a T5 that encodes in the step: sharded with the model (FSDP)
        method_frozen = self.method.frozen_networks() if isinstance(self.method, FreezesNetworks) else []
        frozen = [*method_frozen, *self.data.frozen_networks(tc["parallel"])]
        self.model = parallel.wrap(model, tc["parallel"], self.device, frozen=frozen)
        unwrapped = parallel.unwrap(self.model)
        self.generator = torch.Generator(self.device).manual_seed(tc["seed"] + self.rank)
        self.validator = None
        if self.val_cfg is not None:  # validation samples with the trained network itself: no second copy
            sampler = self.val_cfg["sampler"] or self.method.sampler_defaults()
            self.validator = Validator(
                cfg, self.val_cfg, unwrapped, sampler, self.generator, self.work_dir, self.logger, self.device
            )
        self.ema = EMA(unwrapped, tc["ema_rate"]) if tc["ema_rate"] is not None else None

        self.params = [p for p in unwrapped.parameters() if p.requires_grad]
        self.global_batch = tc["batch_size"] * tc["grad_accum"] * self.world
        lr = scaled_lr(cfg.optimizer["lr"], self.global_batch, tc["auto_lr"])
        self.optimizer = build_optimizer(self.params, cfg.optimizer, lr)
        self.lr_scheduler = build_lr_scheduler(self.optimizer, self.lr_cfg, tc["max_steps"])
        self.amp_dtype = AMP_DTYPES.get(tc["mixed_precision"])
        if self.amp_dtype is torch.bfloat16 and not dist.native_bf16(self.device):
            self.logger.warning(
                f"train.mixed_precision='bf16' on {self.device} without native bf16: autocast is emulated "
                "(on a CPU ~10-25x slower than fp32); consider train.mixed_precision='no'"
            )
        self.scaler = build_scaler(tc, self.device)
        size = preflight.checkpoint_bytes(unwrapped.state_dict().values(), self.params, bool(self.ema))
        disk_note = preflight.check_disk_space(self.work_dir, size, self.ckpt_cfg["keep_last"])
        if disk_note is not None:
            self.logger.warning(disk_note)

        ckpt.seed_everything(tc["seed"] + self.rank)  # a different noise stream per rank
        self.state = TrainState(
            unwrapped,
            self.optimizer,
            self.lr_scheduler,
            self.scaler,
            self.ema,
            self.method,
            self.data,
            self.generator,
            on_resume.run_record(tc, self.world, lr),
        )
        if resume_dir is not None:
            self.checkpointer.load(resume_dir, self.state)

        if dist.is_main():
            cfg.dump(str(self.work_dir / "config.py"))
        log = self.log_cfg
        self.logger.start(tc["max_steps"], self.step, log["wandb_project"], log["wandb_name"], cfg.to_dict())
        self.logger.info(
            f"world {self.world}, global batch {self.global_batch}, lr {lr:.3g}, "
            f"{sum(p.numel() for p in self.params) / 1e6:.2f}M trainable params, start step {self.step}"
        )
        self.logger.info(self.data.describe())

    def _autocast(self):
        if self.amp_dtype is None:
            return nullcontext()
        return torch.autocast(self.device.type, dtype=self.amp_dtype)

    def train_step(self, batches) -> dict[str, float] | None:
        """One optimizer step over ``grad_accum`` micro-batches; None when it was skipped (a non-finite loss, or
        non-finite gradients: divergence, or with fp16 a GradScaler overflow): then nothing moved (weights, lr
        schedule, EMA, method state such as the LCM target, step counter)."""
        accum = self.train_cfg["grad_accum"]
        self.model.train()
        loss_sum, log_sums = torch.zeros((), device=self.device), {}
        for micro in range(accum):
            batch = self.data.prepare(next(batches), self.generator)  # outside autocast: the encoders' own dtype
            with parallel.no_sync(self.model, skip=micro < accum - 1):
                with self._autocast():
                    loss, logs = self.method(self.model, batch)
                self.scaler.scale(loss / accum).backward()
            loss_sum += loss.detach().float() / accum
            for k, v in logs.items():
                log_sums[k] = log_sums.get(k, 0.0) + float(v) / accum
        loss_mean = dist.all_reduce_mean(loss_sum)  # the loss before scaling: divergence is judged on it
        if not torch.isfinite(loss_mean):
            self.optimizer.zero_grad(set_to_none=True)
            return self._skip_step(f"non-finite loss {loss_mean.item()}")
        lr = self.optimizer.param_groups[0]["lr"]
        self.scaler.unscale_(self.optimizer)
        max_norm = self.train_cfg["grad_clip"] or math.inf
        grad_norm = parallel.full_tensor(torch.nn.utils.clip_grad_norm_(self.params, max_norm))
        # Same value on every rank (gradients are all-reduced first), so every rank takes the same branch. A finite
        # loss can still have non-finite gradients: a bf16 overflow (divergence), or with fp16 the GradScaler's
        # overflow, its normal way of finding the loss scale (reported, not divergence).
        finite = bool(torch.isfinite(grad_norm))
        scale = self.scaler.get_scale() if self.scaler.is_enabled() else None  # fp16: the scale of this step
        scaled_step(self.scaler, self.optimizer, finite)
        self.optimizer.zero_grad(set_to_none=True)
        if not finite and scale is not None:
            return self._overflow_step(scale)
        if not finite:
            return self._skip_step(f"non-finite gradient norm {grad_norm.item()}")
        self.state.nan_streak = 0
        self.lr_scheduler.step()
        unwrapped = parallel.unwrap(self.model)
        self.method.after_optimizer_step(unwrapped)
        if self.ema is not None:  # the scheduler has counted this step: updates before it = last_epoch - 1
            self.ema.update(unwrapped, num_updates=self.lr_scheduler.last_epoch - 1)
        names = sorted(log_sums)
        values = torch.tensor([log_sums[k] for k in names], device=self.device, dtype=torch.float64)
        logs = dict(zip(names, dist.all_reduce_mean(values).tolist()))
        return {"loss": loss_mean.item(), "lr": lr, "grad_norm": grad_norm.item(), **logs}

    def _skip_step(self, reason: str) -> None:
        """Count a step skipped as divergence; stop the run after ``train.max_nan_steps`` of them in a row."""
        state = self.state
        state.nan_total, state.nan_streak = state.nan_total + 1, state.nan_streak + 1
        self.logger.warning(f"step {state.step + 1}: {reason}, optimizer step skipped ({state.nan_streak} in a row)")
        if state.nan_streak >= self.train_cfg["max_nan_steps"]:
            raise FloatingPointError(
                f"{state.nan_streak} consecutive steps skipped (last: {reason}); stopping at step {state.step}. "
                f"Last good checkpoint: {self.checkpointer.latest() or 'none written yet'} "
                "(lower the lr or change precision, then resume)"
            )
        return None

    def _overflow_step(self, scale: float) -> None:
        """An fp16 step whose scaled gradients overflowed: the GradScaler skipped it and lowered the scale. Reported,
        not divergence (its loss was finite: it ends a streak of non-finite losses); the run stops only when the
        scale falls below ``train.loss_scale_min``."""
        state = self.state
        state.overflow_total, state.nan_streak = state.overflow_total + 1, 0
        new = self.scaler.get_scale()
        self.logger.info(
            f"step {state.step + 1}: fp16 gradient overflow, loss scale {scale:g} -> {new:g}: optimizer step skipped "
            f"(GradScaler calibration, {state.overflow_total} overflow(s) so far)"
        )
        floor = self.train_cfg["loss_scale_min"]
        if new < floor:
            raise FloatingPointError(
                f"the fp16 loss scale fell to {new:g}, below train.loss_scale_min={floor:g}: the gradients overflow "
                f"even barely scaled; stopping at step {state.step}. Last good checkpoint: "
                f"{self.checkpointer.latest() or 'none written yet'} (lower the lr or use bf16 / fp32, then resume)"
            )
        return None

    def save_checkpoint(self) -> Path:
        """Checkpoint the current step (:meth:`Checkpointer.save`); collective under DDP/FSDP."""
        return self.checkpointer.save(parallel.unwrap(self.model), self.state)

    def validate(self) -> Path | None:
        """The sample grid of the current step (:meth:`Validator.validate`); collective under DDP/FSDP."""
        return self.validator.validate(self.step, self.ema)

    def train(self) -> bool:
        """Run from the current step to ``train.max_steps``, logging, sampling and checkpointing on the way.

        SIGTERM / SIGINT end the run early: a checkpoint at the next step boundary, then a normal return (exit 0 for
        a launcher). Returns True when ``max_steps`` was reached, False when a signal stopped the run (also in
        ``self.stopped_by``): a caller that goes on to use the result must check it (:func:`require_finished`).
        """
        self.stopped_by = None
        max_steps = self.train_cfg["max_steps"]
        batches = iter(self.data)
        self.window = MetricWindow(self.global_batch)
        saved_at, stopped = self.step, False
        stop = StopSignal().install()
        try:
            while self.step < max_steps:
                out = self.train_step(batches)
                self.window.attempt()
                if out is None:  # skipped: not a step (counters, schedule, EMA and checkpoints wait for a real one)
                    continue
                self.state.step += 1
                self.window.add(out)
                self.logger.advance(self.step)
                if self.step % self.log_cfg["every"] == 0 or self.step == max_steps:
                    self._log_window()
                if self.validator is not None and self.step % self.val_cfg["every"] == 0 and self.step < max_steps:
                    self.validate()
                if self.step % self.ckpt_cfg["every"] == 0:
                    self.save_checkpoint()
                    saved_at = self.step
                if stop.requested(self.device):
                    stopped = True
                    break
            if stopped and self.window.attempted:
                self._log_window()
            if saved_at != self.step:
                self.save_checkpoint()
            if stopped:
                self.stopped_by = stop.name
                self.logger.warning(f"stopped by {stop.name} at step {self.step}; resume with --resume auto")
            elif self.validator is not None:
                self.validate()
            summary = self.data.summary()
            if summary is not None:  # what the data skipped, by name, also when no epoch ended
                self.logger.warning(summary)
        finally:
            stop.uninstall()
            self.logger.close()
        return not stopped

    def _log_window(self) -> None:
        """Write out the averaged metrics of the steps since the last log line, with the skip counters."""
        metrics = self.window.flush()
        metrics.setdefault("lr", self.optimizer.param_groups[0]["lr"])
        metrics["nan_skipped"] = self.state.nan_total
        if self.scaler.is_enabled():  # fp16: the loss scale now and the overflow steps so far
            metrics.update(loss_scale=self.scaler.get_scale(), overflow_skipped=self.state.overflow_total)
        self.logger.log(self.step, metrics)


def require_finished(finished: bool, resume_hint: str) -> None:
    """For a tool that goes on after training (publishes an asset, samples, evaluates): a run stopped early by a
    signal is not its result, so stop here (exit status 1) saying how to resume; the checkpoint is kept."""
    if not finished:
        raise SystemExit(
            f"training was stopped by a signal before its last step (its checkpoint is kept): {resume_hint}"
        )
