"""PixArt-delta ControlNet-Transformer training (§4): the shared trainer with a ControlNet config (a ``controlnet``
section and ``data.load_control=True``), not a second loop. ``DiffusionLoss`` passes the batch's control latent
``c``; only the copies and zero linears require gradients, so only they reach the optimizer and the checkpoints
(``model.safetensors`` holds ``controlnet.*``; the frozen base is ``load_from``). ``tools/convert_controlnet.py``
exports the official full-layout ``.pth``.

torchrun --nproc_per_node 8 train_scripts/train_controlnet.py configs/controlnet/pixartms_xl2_img1024_controlnet.py
python train_scripts/train_controlnet.py     # the embedded default: configs/controlnet/tiny_controlnet.py
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from train_scripts.train import main  # noqa: E402

DEFAULT_CONFIG = "configs/controlnet/tiny_controlnet.py"

if __name__ == "__main__":
    main(default_config=DEFAULT_CONFIG)
