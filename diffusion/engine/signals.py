"""Graceful stop on SIGTERM / SIGINT: preemption notices, Ctrl-C and the launcher's signal become "save a checkpoint
at the next step boundary and exit 0" instead of losing every step since the last checkpoint (PixArt-δ §3.3 runs
are long and are preempted on shared clusters).

The handler only records the signal; the training loop asks :meth:`StopSignal.requested` after each optimizer step.
Under DDP/FSDP the ranks agree (a signal seen by any rank stops all of them at the same step), since a rank that
saved and left alone would hang the others in their next collective. A second SIGINT restores the default handler's
behaviour (KeyboardInterrupt) for a user who does not want to wait for the step to finish.
"""

import signal
import threading
from types import FrameType

import torch

from diffusion.engine import dist

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


class StopSignal:
    """Context manager installing the stop handlers (main thread only; elsewhere it is inert)."""

    def __init__(self, signals: tuple[signal.Signals, ...] = STOP_SIGNALS) -> None:
        self.signals, self.received, self._previous = signals, None, {}

    def install(self) -> "StopSignal":
        """Start catching the signals (the previous handlers are kept for :meth:`uninstall`)."""
        if threading.current_thread() is threading.main_thread():
            for sig in self.signals:
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def uninstall(self) -> None:
        """Put the previous handlers back."""
        for sig, previous in self._previous.items():
            signal.signal(sig, previous)
        self._previous = {}

    def __enter__(self) -> "StopSignal":
        return self.install()

    def __exit__(self, *exc) -> None:
        self.uninstall()

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self.received == signal.SIGINT and signum == signal.SIGINT:
            raise KeyboardInterrupt  # second Ctrl-C: stop now, without the checkpoint
        self.received = signal.Signals(signum)

    def requested(self, device: torch.device) -> bool:
        """True on every rank once any rank received a stop signal (a collective when distributed)."""
        if not dist.is_initialized():
            return self.received is not None
        flag = torch.tensor(float(self.received is not None), device=device)
        return bool(dist.all_reduce_mean(flag).item() > 0)

    @property
    def name(self) -> str:
        """Name of the received signal (``'SIGTERM'``), or ``'a stop signal on another rank'``."""
        return self.received.name if self.received is not None else "a stop signal on another rank"
