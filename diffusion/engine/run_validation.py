"""The trainer's sample grids (PixArt-δ Fig. 8 / Fig. 12 style snapshots during training), as a mixin of
:class:`diffusion.engine.trainer.Trainer`: the validation prompts are encoded once, the codec is built before step 1,
and the EMA weights are swapped into the trained network to sample (no second copy of the network).

Uses the trainer's ``cfg``, ``val_cfg``, ``device``, ``work_dir``, ``model``, ``method``, ``ema``, ``generator``,
``logger``, ``pipeline`` and ``val_control`` and its ``_notes``.
"""

from pathlib import Path

import torch

from diffusion.build import build_codec
from diffusion.engine import checkpoint as ckpt
from diffusion.engine import dist, parallel
from diffusion.engine.validation import EncodedPrompts, control_grid, save_grid, swapped_in, validation_control
from diffusion.pipeline import Pipeline
from diffusion.schedulers import DiffusionProcess


class RunValidation:
    """``validate(step)`` and what it needs: the pipeline and, for a ControlNet, the control maps."""

    def _validation_control(self, model: torch.nn.Module) -> torch.Tensor | None:
        """The control maps of a ControlNet run's validation grids (``validation.control``), read before step 1."""
        if self.val_cfg is None:
            return None
        controlled = getattr(model, "accepts_control", False)
        if self.val_cfg["control"] is not None and not controlled:
            raise KeyError("validation.control is set but the model is no ControlNet (no 'controlnet' section)")
        if self.val_cfg["control"] is None:
            if controlled:
                self._notes.append(
                    ("warning", "validation.control is not set: validation grids sample without control")
                )
            return None
        resolution = self.cfg["data"]["resolution"]
        height, width = (resolution, resolution) if isinstance(resolution, int) else tuple(resolution)
        return validation_control(self.val_cfg, list(self.val_cfg["prompts"]), height, width)

    def build_pipeline(self, model: torch.nn.Module):
        """The sampling pipeline used for validation grids (override or monkeypatch in tests): the validation prompts
        are encoded once (T5 in bf16 on the device, then freed) and the codec is built; no T5 stays resident."""
        prompts = EncodedPrompts.from_config(self.cfg, list(self.val_cfg["prompts"]), self.device)
        codec, process = build_codec(self.cfg, self.device), DiffusionProcess.from_config(self.cfg)
        return Pipeline(model, prompts, codec, self.cfg["data"]["resolution"], process=process)

    @torch.no_grad()
    def validate(self, step: int) -> Path | None:
        """Sample the validation prompts with the EMA (else current) weights; save ``samples/step_XXXXXXX.png``.

        The EMA weights are swapped into the trained network for the duration (its own weights wait on the CPU).
        Under FSDP every rank samples (the forward is collective) and rank 0 saves; under DDP only rank 0 samples.
        """
        unwrapped = parallel.unwrap(self.model)
        path = None
        if dist.is_main() or parallel.is_sharded(unwrapped):
            rng = ckpt.rng_state(self.generator)  # sampling must not shift the training noise stream
            if self.pipeline is None:
                self.pipeline = self.build_pipeline(unwrapped)
            sampler = self.val_cfg["sampler"] or self.method.sampler_defaults()
            control = {} if self.val_control is None else {"control": self.val_control}
            with swapped_in(unwrapped, self.ema.shadow if self.ema is not None else None):
                images = self.pipeline(list(self.val_cfg["prompts"]), seed=self.val_cfg["seed"], **sampler, **control)
            columns = None
            if self.val_control is not None:  # each sample beside the control map it follows
                images, columns = control_grid(self.val_control, images)
            if dist.is_main():
                path = save_grid(images, self.work_dir / "samples" / f"step_{step:07d}.png", columns)
                self.logger.image(step, path, caption=" | ".join(self.val_cfg["prompts"]))
            ckpt.set_rng_state(rng, self.generator)
        dist.barrier()
        return path
