"""``train_scripts/train.py`` with the engine stand-ins registered, for torchrun launches in the tests: run from the
checkout as ``python -m torch.distributed.run ... -m tests.engine.train_entry CONFIG ...`` (``-m`` puts the checkout,
the current folder, on the workers' import path, so ``tests`` imports without any path edit).

``TRAIN_ENTRY_CRASH_AFTER_STEP=N`` kills every rank (``os._exit``, no cleanup) right after the checkpoint of step N is
written, as a preempted job would die. ``TRAIN_ENTRY_FORWARD_PIPELINE=1`` replaces the validation pipeline (T5,
codec) by one that runs a single forward of the network being trained (collective under FSDP) and returns a flat
image of its mean output.
"""

import os

import torch

import tests.engine.standins  # noqa: F401  (registers the stand-ins)
from diffusion.engine import Trainer
from diffusion.engine.launch import train
from diffusion.engine.validation import Validator
from tests.engine.standins import LATENT_SIZE, TEXT_CHANNELS, TEXT_LEN

CRASH_AFTER = int(os.environ.get("TRAIN_ENTRY_CRASH_AFTER_STEP", -1))


def _crashing_save(self, _save=Trainer.save_checkpoint):
    path = _save(self)
    if self.step == CRASH_AFTER:
        os._exit(17)
    return path


class ForwardPipeline:
    def __init__(self, model) -> None:
        self.model = model

    def __call__(self, prompts, seed, **sampler):
        g = torch.Generator().manual_seed(seed)
        b = len(prompts)
        x = torch.randn(b, self.model.in_channels, LATENT_SIZE, LATENT_SIZE, generator=g)
        y = torch.randn(b, 1, TEXT_LEN, TEXT_CHANNELS, generator=g)
        out = self.model(x, torch.full((b,), 500), y, torch.ones(b, TEXT_LEN, dtype=torch.long), {})
        value = (out.float().abs().mean() * 100).clamp(0, 255).to(torch.uint8)
        return value.expand(b, 3, 8, 8).clone()


if __name__ == "__main__":
    if CRASH_AFTER >= 0:
        Trainer.save_checkpoint = _crashing_save
    if os.environ.get("TRAIN_ENTRY_FORWARD_PIPELINE"):
        Validator.build_pipeline = lambda self, model: ForwardPipeline(model)
    train()
