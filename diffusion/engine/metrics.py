"""Training logs: a tqdm bar, ``train.log`` text, ``metrics.jsonl`` (one JSON line per log step, read by tests and
plots) and wandb. Only the main process writes; other ranks get a silent logger.

On resume ``metrics.jsonl`` is cut back to the resumed step: the lines of steps after the last checkpoint (and a
line half-written by a killed process) are dropped, so the file holds each step once, as in an uninterrupted run.

wandb mode: ``WANDB_MODE`` when set (``disabled`` skips wandb entirely), else ``online`` with a ``WANDB_API_KEY`` and
``offline`` without one.
"""

import json
import logging
import os
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


class MetricLogger:
    """Sink for scalars, messages and images of one run.

    Args:
        work_dir: run directory; ``train.log`` and ``metrics.jsonl`` are appended to there (``metrics.jsonl`` first
            cut back to ``initial_step``; ``dropped_lines`` says how many lines that removed).
        enabled: False on non-main ranks (everything becomes a no-op except raising).
        total_steps: length of the progress bar.
        initial_step: where a resumed run starts.
        wandb_project / wandb_name: wandb run identity.
        config: plain dict stored as the wandb run config.
    """

    def __init__(
        self,
        work_dir: str | os.PathLike,
        enabled: bool,
        total_steps: int,
        initial_step: int = 0,
        wandb_project: str = "pixart-delta",
        wandb_name: str | None = None,
        config: dict | None = None,
    ) -> None:
        self.enabled = enabled
        self.logger = logging.getLogger(f"diffusion.engine.{Path(work_dir).resolve()}")
        self.logger.setLevel(logging.INFO)
        self.logger.propagate = False
        self.wandb_run = None
        self.bar = None
        self.metrics_path = Path(work_dir) / "metrics.jsonl"
        self.dropped_lines = 0
        if not enabled:
            return
        self.dropped_lines = truncate_metrics(self.metrics_path, initial_step)
        handler = logging.FileHandler(Path(work_dir) / "train.log")
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
        self.logger.handlers = [handler]
        self.bar = tqdm(total=total_steps, initial=initial_step, dynamic_ncols=True, desc="train")
        mode = wandb_mode()
        if mode != "disabled":
            import wandb

            self.wandb_run = wandb.init(
                project=wandb_project, name=wandb_name, dir=str(work_dir), config=config, mode=mode, resume="allow"
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
