"""PixArt-delta ControlNet-Transformer training (§4): the shared trainer with a ControlNet config (a ``controlnet``
section and ``data.load_control=True``), not a second loop. ``DiffusionLoss`` passes the batch's control latent
``c``; only the copies and zero linears require gradients, so only they reach the optimizer and the checkpoints
(``model.safetensors`` holds ``controlnet.*``; the frozen base is ``weights.base``). ``tools/convert_controlnet.py``
exports the official full-layout ``.pth``.

torchrun --nproc_per_node 8 train_scripts/train_controlnet.py configs/controlnet/pixartms_xl2_img1024_controlnet.py
python train_scripts/train_controlnet.py     # the embedded default: configs/controlnet/tiny_controlnet.py
"""

from diffusion.engine.launch import train
from diffusion.paths import repo_path

DEFAULT_CONFIG = repo_path("configs/controlnet/tiny_controlnet.py")


def main(argv: list[str] | None = None) -> bool:
    return train(argv, default_config=DEFAULT_CONFIG, description=__doc__)


if __name__ == "__main__":
    main()
