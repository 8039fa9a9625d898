"""PixArt-delta LCM distillation (§3): the shared trainer with an LCM config (a method object, not a second loop).

torchrun --nproc_per_node 8 train_scripts/train_lcm.py configs/lcm/pixartms_xl2_img1024_lcm.py
python train_scripts/train_lcm.py            # the embedded default: configs/lcm/tiny_lcm.py
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from train_scripts.train import main  # noqa: E402

DEFAULT_CONFIG = "configs/lcm/tiny_lcm.py"

if __name__ == "__main__":
    main(default_config=DEFAULT_CONFIG)
