"""DataLoader workers that leave the stop signals to the training process (PixArt-δ §3.3 runs are preempted often).

torchrun (``os.killpg`` on each rank), SLURM's ``scancel`` and a terminal's Ctrl-C signal every process of a rank,
its DataLoader workers included. PyTorch's worker exits on a SIGTERM from its parent and dies of one from anybody
else, so the main process's next batch raised ``DataLoader worker ... is killed by signal: Terminated`` before the
trainer could save the step it stops at. :func:`worker_init` (the loaders' ``worker_init_fn``) keeps what PyTorch
does for the parent's SIGTERM (the DataLoader shutting a worker down: exit at once) and ignores SIGTERM / SIGINT from
anyone else: the main process handles those (a checkpoint at the step boundary), then shuts its workers down. A
worker whose parent is gone still exits by itself (PyTorch's watchdog); a launcher's SIGKILL still ends it.
"""

import os
import signal
import threading

STOP_SIGNALS = {signal.SIGTERM, signal.SIGINT}


def _watch(parent: int) -> None:
    while True:
        info = signal.sigwaitinfo(STOP_SIGNALS)
        if info.si_signo == signal.SIGTERM and info.si_pid == parent:
            os._exit(0)  # the DataLoader shutting this worker down, as PyTorch's own handler does


def worker_init(worker_id: int) -> None:
    """``worker_init_fn`` of the training loaders: stop signals are blocked in the worker's threads and taken by a
    watcher thread, which ends the worker only on its parent's SIGTERM."""
    signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)  # inherited by threads started from here on
    threading.Thread(target=_watch, args=(os.getppid(),), name="stop-signals", daemon=True).start()
