"""PixArt-delta LCM distillation (§3): the shared trainer with an LCM config (a method object, not a second loop).

torchrun --nproc_per_node 8 train_scripts/train_lcm.py configs/lcm/pixartms_xl2_img1024_lcm.py
python train_scripts/train_lcm.py            # the embedded default: configs/lcm/tiny_lcm.py
"""

from diffusion.engine.launch import train
from diffusion.paths import repo_path

DEFAULT_CONFIG = repo_path("configs/lcm/tiny_lcm.py")


def main(argv: list[str] | None = None) -> bool:
    return train(argv, default_config=DEFAULT_CONFIG, description=__doc__)


if __name__ == "__main__":
    main()
