"""THE training loop, shared by the PixArt-α teacher, PixArt-δ LCM distillation (§3, Algorithm 1) and the
ControlNet-Transformer (§4): they differ only in the config's ``method``, which computes
``loss, logs = method(model, batch)``. The loop never branches on the method.

One optimizer step = ``grad_accum`` micro-steps (gradient all-reduce only on the last), mixed precision, gradient
clipping, lr schedule, then ``method.after_optimizer_step`` and the EMA update. A non-finite loss or gradient norm
skips the step: nothing advances (weights, lr schedule, EMA, method state, step counter); it is counted and logged.
Checkpoints restore everything (weights, EMA, method state, optimizer, scaler, lr schedule, data position, RNG), so a
killed and resumed run reproduces the uninterrupted one exactly on CPU.
"""

import math
import time
from contextlib import nullcontext
from pathlib import Path

import torch
from mmengine.config import Config

from diffusion.build import build_method, build_model
from diffusion.engine import checkpoint as ckpt
from diffusion.engine import dist, parallel, preflight
from diffusion.engine import resume as on_resume
from diffusion.engine.config import check_top_level, resolve_section
from diffusion.engine.data_loop import BatchStream, EpochBatchSampler, describe_data, epoch_report, to_device
from diffusion.engine.ema import EMA
from diffusion.engine.metrics import MetricLogger
from diffusion.engine.optim import build_lr_scheduler, build_optimizer, scaled_lr
from diffusion.engine.run_checkpoint import RunCheckpoint
from diffusion.engine.run_validation import RunValidation
from diffusion.engine.signals import StopSignal
from diffusion.registry import CODECS, DATA_SAMPLERS, DATASETS, METHODS

AMP_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


class Trainer(RunValidation, RunCheckpoint):
    """Builds everything from a config and runs the loop; sample grids come from :class:`RunValidation`, checkpoints
    and resume from :class:`RunCheckpoint`.

    Args:
        cfg: mmengine ``Config`` (or plain dict) with the keys of ``diffusion.engine.config.TOP_LEVEL_KEYS``.
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
        fresh = not self.work_dir.exists()
        preflight.check_work_dir(self.work_dir)
        try:
            self._build(resume)
        except BaseException:  # a run that fails to start leaves no empty run dir behind (a wrong load_from, ...)
            if fresh:
                preflight.remove_if_empty(self.work_dir)
            raise

    def _build(self, resume: str | None) -> None:
        """Everything after the config checks: networks, method, parallel wrapping, optimizer, data, resume state,
        logger; the work dir exists and is writable."""
        cfg, tc = self.cfg, self.train_cfg
        self._notes: list[tuple[str, str | None]] = []  # (level, message) found before the logger exists
        self.device = dist.init()
        self.rank, self.world = dist.rank(), dist.world_size()
        resume_dir = self._resolve_resume(resume)
        if resume is None:
            ckpt.refuse_fresh_start(self.work_dir)
        method_cls = METHODS.get(cfg.method["type"])
        if getattr(method_cls, "requires_load_from", False) and not cfg.get("load_from"):
            raise KeyError(f"method {cfg.method['type']} distils a pretrained teacher: set the config key 'load_from'")

        ckpt.seed_everything(tc["seed"])  # identical initial weights on every rank
        model = build_model(cfg)  # cfg.model with cfg.load_from's weights (the one way in, shared with the tools)
        self.method = build_method(cfg, model)  # under the config's diffusion process (the one way in)
        if resume_dir is not None:  # with frozen parameters, only the trainable ones (the rest is cfg.load_from)
            ckpt.load_trainable(model, ckpt.load_tensors(resume_dir / "model.safetensors"), resume_dir)
        model.to(self.device)
        self.method.to(self.device)
        self.pipeline = None  # validation samples with the trained network itself (EMA swapped in): no second copy
        self.val_control = self._validation_control(model)
        frozen = getattr(self.method, "frozen_networks", list)()  # teacher / target: sharded with the model (FSDP)
        self.model = parallel.wrap(model, tc["parallel"], self.device, frozen=frozen)
        unwrapped = parallel.unwrap(self.model)
        if self.val_cfg is not None and (dist.is_main() or parallel.is_sharded(unwrapped)):
            # text encoder, codec and prompts now, not at the first validation after hours of training
            self.pipeline = self.build_pipeline(unwrapped)
            sampler = self.val_cfg["sampler"] or self.method.sampler_defaults()
            preflight.check_sampling(
                self.pipeline, list(self.val_cfg["prompts"]), dict(sampler), self.val_cfg["seed"], self.val_control
            )
            if hasattr(unwrapped, "reshard"):  # FSDP2 keeps the root's weights gathered after a no-grad forward
                unwrapped.reshard()
        self.ema = EMA(parallel.unwrap(self.model), tc["ema_rate"]) if tc["ema_rate"] is not None else None

        self.params = [p for p in parallel.unwrap(self.model).parameters() if p.requires_grad]
        self.global_batch = tc["batch_size"] * tc["grad_accum"] * self.world
        lr = scaled_lr(cfg.optimizer["lr"], self.global_batch, tc["auto_lr"])
        self.optimizer = build_optimizer(self.params, cfg.optimizer, lr)
        self.lr_scheduler = build_lr_scheduler(self.optimizer, self.lr_cfg, tc["max_steps"])
        self.amp_dtype = AMP_DTYPES.get(tc["mixed_precision"])
        if self.amp_dtype is torch.bfloat16 and not dist.native_bf16(self.device):
            self._notes.append(
                (
                    "warning",
                    f"train.mixed_precision='bf16' on {self.device} without native bf16: autocast is emulated "
                    "(on a CPU ~10-25x slower than fp32); consider train.mixed_precision='no'",
                )
            )
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=tc["mixed_precision"] == "fp16")
        self.lr, self.run_record = lr, on_resume.run_record(tc, self.world, lr)
        size = preflight.checkpoint_bytes(
            parallel.unwrap(self.model).state_dict().values(), self.params, bool(self.ema)
        )
        self._notes.append(("warning", preflight.check_disk_space(self.work_dir, size, self.ckpt_cfg["keep_last"])))

        codec = cfg.codec
        self.scale_factor = codec["scale_factor"] if "scale_factor" in codec else CODECS.build(codec).scale_factor
        self.stream = self._build_data()
        self.generator = torch.Generator(self.device).manual_seed(tc["seed"] + self.rank)
        ckpt.seed_everything(tc["seed"] + self.rank)  # a different noise stream per rank
        self.step, self.nan_total, self.nan_streak = 0, 0, 0
        if resume_dir is not None:
            self._load_state(resume_dir)

        self.work_dir.mkdir(parents=True, exist_ok=True)
        if dist.is_main():
            cfg.dump(str(self.work_dir / "config.py"))
        self.logger = MetricLogger(
            self.work_dir,
            dist.is_main(),
            tc["max_steps"],
            self.step,
            self.log_cfg["wandb_project"],
            self.log_cfg["wandb_name"],
            cfg.to_dict(),
        )
        self.logger.info(
            f"world {self.world}, global batch {self.global_batch}, lr {lr:.3g}, "
            f"{sum(p.numel() for p in self.params) / 1e6:.2f}M trainable params, start step {self.step}"
        )
        self.logger.info(describe_data(self.stream.dataset, self.stream.batch_sampler, tc["batch_size"], self.world))
        self.stream.on_epoch = lambda epoch: self.logger.info(
            epoch_report(self.stream, epoch, tc["batch_size"], self.world)
        )
        if self.logger.dropped_lines:
            self._notes.append(
                ("info", f"metrics.jsonl: dropped {self.logger.dropped_lines} line(s) after step {self.step}")
            )
        for level, note in self._notes:
            if note is not None:
                getattr(self.logger, level)(note)

    def _resolve_resume(self, resume: str | None) -> Path | None:
        if resume is None:
            return None
        if resume != "auto":
            if not (Path(resume) / "training_state.pt").is_file():
                raise FileNotFoundError(f"no checkpoint at {resume} (no training_state.pt)")
            return Path(resume)
        found, skipped = ckpt.find_resumable(self.work_dir)
        self._notes += [("warning", f"{d} is incomplete (no training_state.pt): not resumed from") for d in skipped]
        return found

    def _build_data(self) -> BatchStream:
        tc, cfg = self.train_cfg, self.cfg
        dataset = DATASETS.build(cfg.data)
        self._notes += [("warning", note) for note in preflight.check_caches(cfg, dataset)]  # before step 1
        if cfg.get("data_sampler"):
            batch_sampler = DATA_SAMPLERS.build(
                dict(
                    cfg.data_sampler,
                    dataset_ratios=dataset.aspect_ratios,
                    batch_size=tc["batch_size"],
                    seed=tc["seed"],
                    rank=self.rank,
                    world_size=self.world,
                )
            )
        else:
            batch_sampler = EpochBatchSampler(dataset, tc["batch_size"], self.world, self.rank, tc["seed"])
        # a dataset may bring its own batch functions (test stand-ins do); otherwise the data package's contract ones
        import diffusion.data

        self.prepare_batch = getattr(dataset, "prepare_batch", diffusion.data.prepare_batch)
        collate = getattr(dataset, "collate", diffusion.data.collate)
        return BatchStream(dataset, batch_sampler, collate, tc["num_workers"], tc["seed"] + self.rank)

    def _autocast(self):
        if self.amp_dtype is None:
            return nullcontext()
        return torch.autocast(self.device.type, dtype=self.amp_dtype)

    def train_step(self, batches) -> dict[str, float] | None:
        """One optimizer step over ``grad_accum`` micro-batches; None when it was skipped (non-finite loss or gradient
        norm): then nothing moved (weights, lr schedule, EMA, method state such as the LCM target)."""
        accum = self.train_cfg["grad_accum"]
        self.model.train()
        loss_sum, log_sums = torch.zeros((), device=self.device), {}
        for micro in range(accum):
            batch = self.prepare_batch(to_device(next(batches), self.device), self.scale_factor, self.generator)
            with parallel.no_sync(self.model, skip=micro < accum - 1):
                with self._autocast():
                    loss, logs = self.method(self.model, batch)
                self.scaler.scale(loss / accum).backward()
            loss_sum += loss.detach().float() / accum
            for k, v in logs.items():
                log_sums[k] = log_sums.get(k, 0.0) + float(v) / accum
        loss_mean = dist.all_reduce_mean(loss_sum)
        if not torch.isfinite(loss_mean):
            self.optimizer.zero_grad(set_to_none=True)
            return self._skip_step(f"non-finite loss {loss_mean.item()}")
        lr = self.optimizer.param_groups[0]["lr"]
        self.scaler.unscale_(self.optimizer)
        max_norm = self.train_cfg["grad_clip"] or math.inf
        grad_norm = parallel.full_tensor(torch.nn.utils.clip_grad_norm_(self.params, max_norm))
        # Same value on every rank (gradients are all-reduced first), so every rank takes the same branch. A finite
        # loss can still have non-finite gradients (a bf16 overflow, an fp16 step the GradScaler skips).
        finite = bool(torch.isfinite(grad_norm))
        if self.scaler.is_enabled():
            self.scaler.step(self.optimizer)  # skips the update itself when unscale_ found inf/NaN gradients
            self.scaler.update()  # ... and lowers the loss scale
        elif finite:
            self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        if not finite:
            return self._skip_step(f"non-finite gradient norm {grad_norm.item()}")
        self.nan_streak = 0
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
        """Count a skipped step and stop the run after ``train.max_nan_steps`` of them in a row."""
        self.nan_total, self.nan_streak = self.nan_total + 1, self.nan_streak + 1
        self.logger.warning(f"step {self.step + 1}: {reason}, optimizer step skipped ({self.nan_streak} in a row)")
        if self.nan_streak >= self.train_cfg["max_nan_steps"]:
            last = ckpt.find_latest(self.work_dir)
            raise FloatingPointError(
                f"{self.nan_streak} consecutive steps skipped (last: {reason}); stopping at step {self.step}. "
                f"Last good checkpoint: {last or 'none written yet'} (lower the lr or change precision, then resume)"
            )
        return None

    def train(self) -> bool:
        """Run from the current step to ``train.max_steps``, logging, sampling and checkpointing on the way.

        SIGTERM / SIGINT end the run early: a checkpoint at the next step boundary, then a normal return (exit 0 for
        a launcher). Returns True when ``max_steps`` was reached, False when a signal stopped the run (also in
        ``self.stopped_by``): a caller that goes on to use the result must check it (:func:`require_finished`).
        """
        self.stopped_by = None
        max_steps = self.train_cfg["max_steps"]
        batches = iter(self.stream)
        self._reset_window()
        saved_at, stopped = self.step, False
        stop = StopSignal().install()
        try:
            while self.step < max_steps:
                out = self.train_step(batches)
                self._window_steps += 1
                if out is None:  # skipped: not a step (counters, schedule, EMA and checkpoints wait for a real one)
                    continue
                self.step += 1
                self._window_ok += 1
                for k, v in out.items():
                    self._window[k] = self._window.get(k, 0.0) + v
                self.logger.advance(self.step)
                if self.step % self.log_cfg["every"] == 0 or self.step == max_steps:
                    self._log_window()
                if self.val_cfg is not None and self.step % self.val_cfg["every"] == 0 and self.step < max_steps:
                    self.validate(self.step)
                if self.step % self.ckpt_cfg["every"] == 0:
                    self.save_checkpoint()
                    saved_at = self.step
                if stop.requested(self.device):
                    stopped = True
                    break
            if stopped and self._window_steps:
                self._log_window()
            if saved_at != self.step:
                self.save_checkpoint()
            if stopped:
                self.stopped_by = stop.name
                self.logger.warning(f"stopped by {stop.name} at step {self.step}; resume with --resume auto")
            elif self.val_cfg is not None:
                self.validate(self.step)
        finally:
            stop.uninstall()
            self.logger.close()
        return not stopped

    def _reset_window(self) -> None:
        self._window, self._window_ok, self._window_steps, self._window_start = {}, 0, 0, time.perf_counter()

    def _log_window(self) -> None:
        """Average the metrics of the finished steps since the last log line and write them out."""
        metrics = {k: v / self._window_ok for k, v in self._window.items()}
        metrics.setdefault("loss", math.nan)
        metrics.setdefault("lr", self.optimizer.param_groups[0]["lr"])
        elapsed = time.perf_counter() - self._window_start
        metrics.update(img_per_s=self.global_batch * self._window_steps / elapsed, nan_skipped=self.nan_total)
        self.logger.log(self.step, metrics)
        self._reset_window()


def require_finished(finished: bool, resume_hint: str) -> None:
    """For a tool that goes on after training (publishes an asset, samples, evaluates): a run stopped early by a
    signal is not its result, so stop here (exit status 1) saying how to resume; the checkpoint is kept."""
    if not finished:
        raise SystemExit(
            f"training was stopped by a signal before its last step (its checkpoint is kept): {resume_hint}"
        )
