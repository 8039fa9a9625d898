"""Entry point for every training run (teacher, PixArt-δ LCM distillation §3, ControlNet §4): parse, load the config,
hand over to the trainer (``diffusion.engine.launch``).

    python train_scripts/train.py CONFIG [--work-dir DIR] [--resume auto|PATH] [--cfg-options k=v ...]
    torchrun --nproc_per_node N [--nnodes M ...] train_scripts/train.py CONFIG ...
"""

from diffusion.engine.launch import train


def main(argv: list[str] | None = None) -> bool:
    """Train the run of ``argv``; whether it reached ``max_steps`` (False: stopped by a signal after a checkpoint)."""
    return train(argv, description=__doc__)


if __name__ == "__main__":
    main()
