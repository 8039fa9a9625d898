"""Prompts -> images, shared by ``tools/sample.py``, the trainer's sample grids, evaluation and benchmarks.

Teacher sampling (PixArt-alpha): DPM-Solver++(2M) or DDIM with classifier-free guidance, whose unconditional input
is the model's learned null caption ``y_embedding`` with the prompt's own mask (as the official code). LCM sampling
(PixArt-delta §3): the multistep consistency sampler, one model evaluation per step and no guidance.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from diffusion.data.text_encoder import TextEncoder
from diffusion.schedulers import LCMScheduler, NoiseSchedule, ddim_sample, dpm_solver_pp_sample

SAMPLERS = ("dpm", "ddim", "lcm")
# The one table of sampler defaults (PixArt-alpha: DPM-Solver++ 20 steps with CFG 4.5; PixArt-delta: LCM 4 steps, no
# CFG). Every tool, the trainer's sample grids and the app fill what the user left out from here.
SAMPLER_DEFAULTS = {
    "dpm": dict(steps=20, cfg_scale=4.5),
    "ddim": dict(steps=20, cfg_scale=4.5),
    "lcm": dict(steps=4, cfg_scale=None),
}


@dataclass
class SamplerConfig:
    """How to sample: ``name`` in {dpm, ddim, lcm}, number of steps, guidance scale.

    ``steps`` / ``cfg_scale`` left as None take the sampler's :data:`SAMPLER_DEFAULTS`. ``cfg_scale`` is in the
    teacher samplers' convention ``uncond + cfg (cond - uncond)``: 1.0 means no guidance (and no null-caption pass).
    The LCM sampler runs without a CFG batch.
    """

    name: str = "dpm"
    steps: int | None = None
    cfg_scale: float | None = None
    timesteps: Sequence[int] | None = None
    lcm_schedule: str = "pixart"

    def __post_init__(self):
        if self.name not in SAMPLERS:
            raise ValueError(f"unknown sampler {self.name!r}; expected one of {SAMPLERS}")
        defaults = SAMPLER_DEFAULTS[self.name]
        if self.steps is None:
            self.steps = defaults["steps"]
        if self.cfg_scale is None:
            self.cfg_scale = defaults["cfg_scale"]
        if self.timesteps is None and self.steps < 1:
            raise ValueError(f"sampler {self.name!r} needs steps >= 1, got {self.steps}")


class Pipeline:
    """Text encoder + PixArt model + codec.

    Args:
        model: PixArt / PixArtMS (eval mode is set while sampling).
        text_encoder: ``TextEncoder`` (any T5 encoder).
    Built from a config and a checkpoint by ``diffusion.build.load_pipeline``.
        codec: object with ``decode(z) -> images in [-1, 1]``, ``scale_factor``, ``latent_channels``, ``downsample``.
        resolution: default image size in pixels (square), or (height, width).
        offload_text_encoder: keep T5 on the CPU between calls and bring it to the model's device only to encode
            (PixArt-delta's lean inference: T5-XXL is 9.5 GB in bf16, the transformer 1.2 GB).
    """

    def __init__(
        self,
        model: nn.Module,
        text_encoder: TextEncoder,
        codec,
        resolution: int | tuple[int, int],
        offload_text_encoder: bool = False,
    ):
        self.model, self.text_encoder, self.codec = model, text_encoder, codec
        self.resolution = (resolution, resolution) if isinstance(resolution, int) else tuple(resolution)
        self.offload_text_encoder = offload_text_encoder
        self.reuse_caption = True  # caption projection + cross-attention K/V once per call, not once per step
        self.schedule = NoiseSchedule()
        self.nfe = 0  # model evaluations per image of the last call (CFG counts two)

    def with_model(self, model: nn.Module) -> Pipeline:
        """A pipeline over ``model`` that shares this one's text encoder, codec and resolution."""
        return Pipeline(model, self.text_encoder, self.codec, self.resolution, self.offload_text_encoder)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def encode(self, prompts: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """(y (B,1,L,C), y_mask (B,L)) on the model's device and dtype."""
        if self.offload_text_encoder:
            self.text_encoder.to(self.device)
        y, mask = self.text_encoder.encode(list(prompts))
        if self.offload_text_encoder:
            self.text_encoder.to("cpu")
            if self.device.type == "cuda":
                torch.cuda.empty_cache()  # hand T5's memory to the transformer and the VAE
        dtype = next(self.model.parameters()).dtype
        return y.to(self.device, dtype), mask.to(self.device)

    def denoise_fn(self, y: torch.Tensor, mask: torch.Tensor, data_info: Mapping, cfg_scale: float | None):
        """``(xt, t) -> eps`` for the samplers; with guidance the batch is run once as [cond ‖ null caption]."""
        channels = self.model.in_channels
        if cfg_scale is not None:
            null = self.model.y_embedder.null_caption(y.shape[0]).to(y.dtype)
            y, mask = torch.cat([y, null]), torch.cat([mask, mask])
            data_info = {k: torch.cat([v, v]) for k, v in data_info.items()}
        model_fn = self._caption_fn(y, mask, data_info)
        if cfg_scale is None:

            def eps_fn(xt, t):
                self.nfe += 1
                return model_fn(xt.to(y.dtype), t)[:, :channels].float()

            return eps_fn

        def cfg_eps_fn(xt, t):
            self.nfe += 2
            out = model_fn(torch.cat([xt, xt]).to(y.dtype), torch.cat([t, t]))[:, :channels]
            cond, uncond = out.float().chunk(2)
            return uncond + cfg_scale * (cond - uncond)

        return cfg_eps_fn

    def _caption_fn(self, y: torch.Tensor, mask: torch.Tensor, data_info: Mapping):
        """``(x, t) -> model output`` for one prompt batch. With ``reuse_caption`` (and a model that offers
        ``encode_caption``), the caption projection and every block's cross-attention K/V run once here instead of
        at every step: the same numbers (tests/test_pipeline_speed.py), ~(1 + depth) fewer matmuls per step."""
        if self.reuse_caption and hasattr(self.model, "encode_caption"):
            caption = self.model.encode_caption(y, mask)
            return lambda x, t: self.model(x, t, None, None, data_info, caption=caption)
        return lambda x, t: self.model(x, t, y, mask, data_info)

    @torch.no_grad()
    def sample_latents(
        self,
        prompts: Sequence[str],
        sampler: SamplerConfig,
        seed: int = 0,
        height: int | None = None,
        width: int | None = None,
        x_T: torch.Tensor | None = None,
        caption: tuple[torch.Tensor, torch.Tensor] | None = None,
    ) -> torch.Tensor:
        """Denoised latents (B, C, h, w) in model space (codec latents times ``scale_factor``).

        ``caption``: ``encode(prompts)`` computed beforehand (y (B,1,L,C), y_mask (B,L)); T5 is then not run.
        """
        height, width = height or self.resolution[0], width or self.resolution[1]
        down = self.codec.downsample
        generator = torch.Generator("cpu").manual_seed(seed)
        if x_T is None:
            shape = (len(prompts), self.model.in_channels, height // down, width // down)
            x_T = torch.randn(shape, generator=generator)
        x_T = x_T.to(self.device, torch.float32)
        y, mask = self.encode(prompts) if caption is None else caption
        hw = torch.tensor([[float(height), float(width)]], device=self.device).expand(len(prompts), 2)
        data_info = {"img_hw": hw, "aspect_ratio": hw[:, :1] / hw[:, 1:]}
        guided = sampler.name != "lcm" and sampler.cfg_scale not in (None, 1.0)
        eps_fn = self.denoise_fn(y, mask, data_info, sampler.cfg_scale if guided else None)
        was_training = self.model.training
        self.model.eval()
        self.nfe = 0
        try:
            if sampler.name == "lcm":
                lcm = LCMScheduler(schedule=sampler.lcm_schedule)
                steps = None if sampler.timesteps is not None else sampler.steps
                z = lcm.sample(eps_fn, x_T, steps, generator=generator, timesteps=sampler.timesteps)
            elif sampler.name == "ddim":
                z = ddim_sample(eps_fn, x_T, self.schedule, sampler.steps, timesteps=sampler.timesteps)
            else:
                z = dpm_solver_pp_sample(eps_fn, x_T, self.schedule, sampler.steps, timesteps=sampler.timesteps)
        finally:
            self.model.train(was_training)
        return z

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """Latents -> uint8 images (B, 3, H, W)."""
        images = self.codec.decode(z.float() / self.codec.scale_factor)
        return ((images.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).cpu()

    def __call__(self, prompts: Sequence[str], seed: int = 0, **sampler) -> torch.Tensor:
        """uint8 images (B, 3, H, W) for ``prompts``; ``sampler`` keywords are those of :class:`SamplerConfig`."""
        extra = {k: sampler.pop(k) for k in ("height", "width") if k in sampler}
        return self.decode(self.sample_latents(prompts, SamplerConfig(**sampler), seed=seed, **extra))
