"""``train_scripts/train.py`` with the engine stand-ins registered (for torchrun launches in the tests)."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import tests.engine.standins  # noqa: E402, F401  (registers the stand-ins)
from train_scripts.train import main  # noqa: E402

if __name__ == "__main__":
    main()
