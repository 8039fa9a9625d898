"""Training logs: a tqdm bar, ``train.log`` text, ``metrics.jsonl`` (one JSON line per log step, read by tests and
plots) and wandb. Only the main process writes; other ranks get a silent logger.

On resume ``metrics.jsonl`` is cut back to the resumed step: the lines of steps after the last checkpoint (and a
line half-written by a killed process) are dropped, so the file holds each step once, as in an uninterrupted run.

wandb mode: ``WANDB_MODE`` when set (``disabled`` skips wandb entirely), else ``online`` with a ``WANDB_API_KEY`` and
``offline`` without one.
"""

import json
import logging
import math
import os
import time
from pathlib import Path

from tqdm import tqdm


def wandb_mode() -> str:
    """The wandb mode implied by the environment."""
    return os.environ.get("WANDB_MODE") or ("online" if os.environ.get("WANDB_API_KEY") else "offline")


def truncate_metrics(path: str | os.PathLike, last_step: int) -> int:
    """Keep the lines of ``path`` whose step is <= ``last_step`` (atomically rewritten); returns how many were dropped,
    unreadable lines included."""
    path = Path(path)
    if not path.is_file():
        return 0
    kept, dropped = [], 0
    for line in path.read_text().splitlines():
        try:
            keep = json.loads(line)["step"] <= last_step
        except (ValueError, KeyError, TypeError):
            keep = False
        if keep:
            kept.append(line + "\n")
        else:
            dropped += 1
    if dropped:
        tmp = path.with_suffix(".jsonl.tmp")
        tmp.write_text("".join(kept))
        os.replace(tmp, path)
    return dropped


class MetricWindow:
    """The metrics of the steps since the last log line: :meth:`flush` averages those of the finished steps and adds
    ``img_per_s`` over every step attempted (skipped ones included: they took the time too)."""

    def __init__(self, images_per_step: int) -> None:
        self.images_per_step = images_per_step
        self._reset()

    def _reset(self) -> None:
        self.sums, self.finished, self.attempted, self.start = {}, 0, 0, time.perf_counter()

    def attempt(self) -> None:
        """Count a step attempt (finished or skipped)."""
        self.attempted += 1

    def add(self, metrics: dict[str, float]) -> None:
        """The metrics of a finished step."""
        self.finished += 1
        for k, v in metrics.items():
            self.sums[k] = self.sums.get(k, 0.0) + v

    def flush(self) -> dict[str, float]:
        """Averages since the last flush (``loss`` NaN when every step was skipped), then start a new window."""
        metrics = {k: v / self.finished for k, v in self.sums.items()}
        metrics.setdefault("loss", math.nan)
        metrics["img_per_s"] = self.images_per_step * self.attempted / (time.perf_counter() - self.start)
        self._reset()
        return metrics


class MetricLogger:
    """Sink for scalars, messages and images of one run; it exists before anything needs to log.

    Messages (:meth:`info`, :meth:`warning`) work from construction: ``train.log`` is opened at the first one, so a
    run that fails to start before logging anything leaves its new work dir empty (and removable). Scalars, images
    and the progress bar start with :meth:`start`, once the step a resumed run continues from is known.

    Args:
        work_dir: run directory; ``train.log`` and ``metrics.jsonl`` are appended to there.
        enabled: False on non-main ranks (everything becomes a no-op except raising).
    """

    def __init__(self, work_dir: str | os.PathLike, enabled: bool) -> None:
        self.enabled, self.work_dir = enabled, Path(work_dir)
        self.logger = logging.getLogger(f"diffusion.engine.{self.work_dir.resolve()}")
        self.logger.setLevel(logging.INFO)
        self.logger.propagate = False
        self.wandb_run = None
        self.bar = None
        self.metrics_path = self.work_dir / "metrics.jsonl"
        self.logger.handlers = []
        if enabled:
            handler = logging.FileHandler(self.work_dir / "train.log", delay=True)
            handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
            self.logger.handlers = [handler]

    def start(
        self,
        total_steps: int,
        initial_step: int = 0,
        wandb_project: str = "pixart-delta",
        wandb_name: str | None = None,
        config: dict | None = None,
    ) -> None:
        """Begin the scalar sinks at ``initial_step`` (where a resumed run starts): ``metrics.jsonl`` is cut back to
        it (the lines dropped are counted in ``train.log``), the progress bar runs to ``total_steps``, and wandb
        starts a run named ``wandb_project`` / ``wandb_name`` with ``config`` (a plain dict) as its config."""
        if not self.enabled:
            return
        dropped = truncate_metrics(self.metrics_path, initial_step)
        if dropped:
            self.info(f"metrics.jsonl: dropped {dropped} line(s) after step {initial_step}")
        self.bar = tqdm(total=total_steps, initial=initial_step, dynamic_ncols=True, desc="train")
        mode = wandb_mode()
        if mode != "disabled":
            import wandb

            self.wandb_run = wandb.init(
                project=wandb_project,
                name=wandb_name,
                dir=str(self.work_dir),
                config=config,
                mode=mode,
                resume="allow",
            )

    def info(self, message: str) -> None:
        """Write a line to ``train.log`` (main rank)."""
        if self.enabled:
            self.logger.info(message)

    def warning(self, message: str) -> None:
        """Write a warning to ``train.log`` and the console (main rank)."""
        if self.enabled:
            self.logger.warning(message)
            tqdm.write(f"WARNING: {message}")

    def advance(self, step: int) -> None:
        """Move the progress bar to ``step``."""
        if self.bar is not None:
            self.bar.update(step - self.bar.n)

    def log(self, step: int, metrics: dict[str, float]) -> None:
        """Record scalars for ``step`` in every sink."""
        if not self.enabled:
            return
        if self.bar is None:
            raise RuntimeError("MetricLogger.log() before start(): the scalar sinks start once the step is known")
        line = {"step": step, **metrics}
        with open(self.metrics_path, "a") as f:
            f.write(json.dumps(line) + "\n")
        self.logger.info(" ".join(f"{k}={v:.6g}" if isinstance(v, float) else f"{k}={v}" for k, v in line.items()))
        self.bar.set_postfix(
            loss=f"{metrics['loss']:.4f}", lr=f"{metrics['lr']:.2e}", img_s=f"{metrics['img_per_s']:.1f}"
        )
        if self.wandb_run is not None:
            self.wandb_run.log(metrics, step=step)

    def image(self, step: int, path: str | os.PathLike, caption: str = "") -> None:
        """Send a saved image to wandb."""
        if self.wandb_run is not None:
            import wandb

            self.wandb_run.log({"samples": wandb.Image(str(path), caption=caption)}, step=step)

    def close(self) -> None:
        """Flush and close every sink."""
        if self.bar is not None:
            self.bar.close()
        for handler in self.logger.handlers:
            handler.close()
        self.logger.handlers = []
        if self.wandb_run is not None:
            self.wandb_run.finish()
