"""A torchrun worker around :func:`diffusion.engine.dist.init` for the restart test in test_distributed.py.

On torchrun's first attempt rank 1 SIGKILLs itself after one all-reduce (rank 0 then fails in the next collective and
the agent restarts the group). On the restart rank 1 starts ``RESTART_ENTRY_SLOW_START`` seconds late, as a rank does
whose imports ran on a loaded machine, so that rank 0 asks the store for rank 1's address before rank 1 rewrote it.
"""

import importlib.util
import os
import signal
import time
from pathlib import Path

import torch

# dist.py alone, without diffusion.engine's __init__ (the trainer and all it imports: 3x the start-up time)
_spec = importlib.util.spec_from_file_location(
    "dist", Path(__file__).resolve().parents[2] / "diffusion" / "engine" / "dist.py"
)
dist = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(dist)

attempt = int(os.environ["TORCHELASTIC_RESTART_COUNT"])
if attempt > 0 and os.environ["RANK"] == "1":
    time.sleep(float(os.environ.get("RESTART_ENTRY_SLOW_START", "0")))
dist.init(timeout_minutes=1)
total = dist.all_reduce_mean(torch.ones(1)) * dist.world_size()
if attempt == 0 and dist.rank() == 1:
    os.kill(os.getpid(), signal.SIGKILL)
dist.barrier()
print(f"attempt {attempt} rank {dist.rank()}: all-reduce {total.item():.0f}", flush=True)
dist.cleanup()
