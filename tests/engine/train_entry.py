"""``train_scripts/train.py`` with the engine stand-ins registered (for torchrun launches in the tests).

``TRAIN_ENTRY_CRASH_AFTER_STEP=N`` kills every rank (``os._exit``, no cleanup) right after the checkpoint of step N is
written, as a preempted job would die.
"""

import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import tests.engine.standins  # noqa: E402, F401  (registers the stand-ins)
from diffusion.engine import Trainer  # noqa: E402
from train_scripts.train import main  # noqa: E402

CRASH_AFTER = int(os.environ.get("TRAIN_ENTRY_CRASH_AFTER_STEP", -1))


def _crashing_save(self, _save=Trainer.save_checkpoint):
    path = _save(self)
    if self.step == CRASH_AFTER:
        os._exit(17)
    return path


if __name__ == "__main__":
    if CRASH_AFTER >= 0:
        Trainer.save_checkpoint = _crashing_save
    main()
