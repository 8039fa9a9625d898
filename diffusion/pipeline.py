"""Prompts -> images, shared by ``tools/sample.py``, the trainer's sample grids, evaluation and benchmarks.

Teacher sampling (PixArt-alpha): DPM-Solver++(2M) or DDIM with classifier-free guidance, whose unconditional input
is the model's learned null caption ``y_embedding`` with the prompt's own mask (as the official code). LCM sampling
(PixArt-delta §3): the multistep consistency sampler, one model evaluation per step and no guidance. Every sampler
runs on the pipeline's :class:`DiffusionProcess` (T, betas, and an LCM student's DDIM grid and boundary scalings),
which ``diffusion.build.load_pipeline`` reads from the checkpoint's config.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from diffusion.data.buckets import binning_table, closest_bucket, resize_and_crop
from diffusion.data.text_encoder import TextEncoder
from diffusion.model.compile import compile_blocks, graphed_step
from diffusion.protocols import CaptionEncoder, ControlledModel, embeds_guidance
from diffusion.schedulers import DiffusionProcess, ddim_sample, dpm_solver_pp_sample

SAMPLERS = ("dpm", "ddim", "lcm")  # the diffusion samplers (diffusion.registry.DATA_SAMPLERS: the batch samplers)
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
    The LCM sampler runs without a CFG batch; for a student with a w-embedding (LCM's variant) ``cfg_scale`` is the
    guidance it embeds, in diffusers' convention ``w = cfg_scale - 1`` (LCM's ``cond + w (cond - uncond)``: the
    paper's w = 4.5 is cfg_scale 5.5). A student without one distilled a fixed w and takes no ``cfg_scale``.
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
        compile: regional compilation, ``torch.compile`` of every transformer block in place
            (``diffusion.model.compile.compile_blocks``; the first call of each shape compiles).
        cuda_graphs: the whole denoiser step compiled with CUDA graphs (``mode="reduce-overhead"``; static shapes,
            CUDA only: a model on another device is a ``RuntimeError``). Not together with ``compile``.
        process: the diffusion process the model was trained under (``DiffusionProcess.from_config(cfg)``); None:
            PixArt-alpha's schedule and PixArt-delta's LCM settings.
    """

    def __init__(
        self,
        model: nn.Module,
        text_encoder: TextEncoder,
        codec,
        resolution: int | tuple[int, int],
        offload_text_encoder: bool = False,
        compile: bool = False,
        cuda_graphs: bool = False,
        process: DiffusionProcess | None = None,
    ):
        if compile and cuda_graphs:
            raise ValueError("cuda_graphs compiles the whole step already: pass compile or cuda_graphs, not both")
        self.model, self.text_encoder, self.codec = model, text_encoder, codec
        self.resolution = (resolution, resolution) if isinstance(resolution, int) else tuple(resolution)
        self.offload_text_encoder = offload_text_encoder
        self.compile, self.cuda_graphs = compile, cuda_graphs
        if compile:
            compile_blocks(model)
        self._step_model = graphed_step(model) if cuda_graphs else model
        self.reuse_caption = True  # caption projection + cross-attention K/V once per call, not once per step
        self.process = DiffusionProcess() if process is None else process
        self.schedule = self.process.schedule
        self.nfe = 0  # model evaluations per image of the last call (CFG counts two)

    def with_model(
        self,
        model: nn.Module,
        compile: bool = False,
        cuda_graphs: bool = False,
        process: DiffusionProcess | None = None,
    ) -> Pipeline:
        """A pipeline over ``model`` that shares this one's text encoder, codec and resolution; its process is
        ``process`` (another config's model) or this one's."""
        return Pipeline(
            model,
            self.text_encoder,
            self.codec,
            self.resolution,
            self.offload_text_encoder,
            compile=compile,
            cuda_graphs=cuda_graphs,
            process=self.process if process is None else process,
        )

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

    def encode_control(self, control: torch.Tensor, batch: int, height: int, width: int) -> torch.Tensor:
        """Control input -> the model-space control latent ``c`` (batch, C, h, w) for a ControlNet (PixArt-delta §4).

        ``control``: images (1 | batch, 3, height, width), uint8 or float in [-1, 1], encoded with this pipeline's
        codec (posterior mean, x ``scale_factor``); or a ready latent (1 | batch, C, h, w) already x ``scale_factor``.
        """
        if not isinstance(self.model, ControlledModel):
            raise ValueError(f"control= needs a ControlNet model; {type(self.model).__name__} takes no control input")
        down, channels = self.codec.downsample, self.model.in_channels
        if control.ndim == 3:
            control = control[None]
        if control.ndim != 4 or control.shape[0] not in (1, batch):
            raise ValueError(f"control must be (1 or {batch}, 3 or {channels}, H, W), got {tuple(control.shape)}")
        if control.shape[1] == channels and control.shape[-2:] == (height // down, width // down):
            c = control.float()
        elif control.shape[1] == 3 and control.shape[-2:] == (height, width):
            images = control.float() / 127.5 - 1 if control.dtype == torch.uint8 else control.float()
            if images.min() < -1.001 or images.max() > 1.001:
                raise ValueError("float control images must be in [-1, 1] (pass uint8 for 0..255)")
            params = list(self.codec.parameters()) if isinstance(self.codec, nn.Module) else []
            mean, _ = self.codec.encode(images.to(params[0].device if params else self.device))
            c = mean.float() * self.codec.scale_factor
        else:
            raise ValueError(
                f"control must be images (B, 3, {height}, {width}) or a latent (B, {channels}, {height // down}, "
                f"{width // down}), got {tuple(control.shape)}"
            )
        dtype = next(self.model.parameters()).dtype
        return c.to(self.device, dtype).expand(batch, -1, -1, -1)

    def denoise_fn(
        self,
        y: torch.Tensor,
        mask: torch.Tensor,
        data_info: Mapping,
        cfg_scale: float | None,
        c: torch.Tensor | None = None,
    ):
        """``(xt, t) -> eps`` for the samplers; with guidance the batch is run once as [cond ‖ null caption].

        ``c``: a ControlNet's control latent (B, C, h, w), shared by both halves of the guidance batch."""
        channels = self.model.in_channels
        if cfg_scale is not None:
            null = self.model.y_embedder.null_caption(y.shape[0]).to(y.dtype)
            y, mask = torch.cat([y, null]), torch.cat([mask, mask])
            data_info = {k: torch.cat([v, v]) for k, v in data_info.items()}
        model_fn = self._caption_fn(y, mask, data_info)
        if cfg_scale is None:
            control = {} if c is None else {"c": c}

            def eps_fn(xt, t):
                self.nfe += 1
                return model_fn(xt.to(y.dtype), t, **control)[:, :channels].float()

            return eps_fn
        control2 = {} if c is None else {"c": torch.cat([c, c])}

        def cfg_eps_fn(xt, t):
            self.nfe += 2
            out = model_fn(torch.cat([xt, xt]).to(y.dtype), torch.cat([t, t]), **control2)[:, :channels]
            cond, uncond = out.float().chunk(2)
            return uncond + cfg_scale * (cond - uncond)

        return cfg_eps_fn

    def _caption_fn(self, y: torch.Tensor, mask: torch.Tensor, data_info: Mapping):
        """``(x, t) -> model output`` for one prompt batch. With ``reuse_caption`` (and a model that offers
        ``encode_caption``), the caption projection and every block's cross-attention K/V run once here instead of
        at every step: the same numbers (tests/test_pipeline_speed.py), ~(1 + depth) fewer matmuls per step.
        With ``cuda_graphs`` the call replays the captured step and its output is copied out of the graph's memory."""
        model, caption = self._step_model, {}
        if self.reuse_caption and isinstance(self.model, CaptionEncoder):
            caption, y, mask = {"caption": self.model.encode_caption(y, mask)}, None, None

        def model_fn(x, t, **kw):
            if not self.cuda_graphs:
                return model(x, t, y, mask, data_info, **caption, **kw)
            torch.compiler.cudagraph_mark_step_begin()  # a new step: the last replay's output buffers are reused
            return model(x, t, y, mask, data_info, **caption, **kw).clone()

        return model_fn

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
        control: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Denoised latents (B, C, h, w) in model space (codec latents times ``scale_factor``).

        ``caption``: ``encode(prompts)`` computed beforehand (y (B,1,L,C), y_mask (B,L)); T5 is then not run.
        ``control``: a ControlNet's control images or latent (see :meth:`encode_control`); None = no control."""
        height = self.resolution[0] if height is None else height
        width = self.resolution[1] if width is None else width
        self.check_size(height, width)
        down = self.codec.downsample
        generator = torch.Generator("cpu").manual_seed(seed)
        if x_T is None:
            shape = (len(prompts), self.model.in_channels, height // down, width // down)
            x_T = torch.randn(shape, generator=generator)
        x_T = x_T.to(self.device, torch.float32)
        y, mask = self.encode(prompts) if caption is None else caption
        hw = torch.tensor([[float(height), float(width)]], device=self.device).expand(len(prompts), 2)
        data_info = {"img_hw": hw, "aspect_ratio": hw[:, :1] / hw[:, 1:], **self.guidance_info(sampler, len(prompts))}
        guided = sampler.name != "lcm" and sampler.cfg_scale not in (None, 1.0)
        c = None if control is None else self.encode_control(control, len(prompts), height, width)
        eps_fn = self.denoise_fn(y, mask, data_info, sampler.cfg_scale if guided else None, c)
        was_training = self.model.training
        self.model.eval()
        self.nfe = 0
        try:
            if sampler.name == "lcm":
                lcm = self.process.lcm_scheduler(sampler.lcm_schedule)
                steps = None if sampler.timesteps is not None else sampler.steps
                z = lcm.sample(eps_fn, x_T, steps, generator=generator, timesteps=sampler.timesteps)
            elif sampler.name == "ddim":
                z = ddim_sample(eps_fn, x_T, self.schedule, sampler.steps, timesteps=sampler.timesteps)
            else:
                z = dpm_solver_pp_sample(eps_fn, x_T, self.schedule, sampler.steps, timesteps=sampler.timesteps)
        finally:
            self.model.train(was_training)
        return z

    def check_size(self, height: int, width: int) -> None:
        """Refuse an image size the model cannot tile: each side must be a positive multiple of the codec's
        downsample factor times the model's patch size (anything else is floored or fails inside the model)."""
        down, patch = self.codec.downsample, self.model.patch_size
        for name, side in (("height", height), ("width", width)):
            if side <= 0 or side % (down * patch):
                raise ValueError(
                    f"{name} {side} must be a positive multiple of {down * patch} (codec downsample {down} x patch "
                    f"size {patch})"
                )

    def guidance_info(self, sampler: SamplerConfig, batch_size: int) -> dict[str, torch.Tensor]:
        """``{'guidance': w (B,)}`` for a w-embedding student under the LCM sampler (w = cfg_scale - 1), else {}."""
        embeds_w = embeds_guidance(self.model)
        if sampler.name != "lcm":
            if embeds_w:
                raise ValueError("a student with a w-embedding samples with the 'lcm' sampler")
            return {}
        if not embeds_w:
            if sampler.cfg_scale not in (None, 1.0):
                raise ValueError(
                    f"cfg_scale {sampler.cfg_scale} has no effect: this LCM student has no w-embedding (its guidance "
                    "was fixed in distillation); leave it unset"
                )
            return {}
        if sampler.cfg_scale is None:
            raise ValueError(
                "this LCM student embeds its guidance: pass cfg_scale (diffusers' convention, w = cfg_scale - 1; the "
                "paper's w = 4.5 is cfg_scale 5.5)"
            )
        return {"guidance": torch.full((batch_size,), sampler.cfg_scale - 1.0, device=self.device)}

    def decode(self, z: torch.Tensor, size: tuple[int, int] | None = None) -> torch.Tensor:
        """Latents -> uint8 images (B, 3, H, W); ``size`` (height, width): resized to cover it and centre-cropped
        before quantising (the last step of resolution binning)."""
        images = self.codec.decode(z.float() / self.codec.scale_factor)
        if size is not None:
            images = resize_and_crop(images.float(), *size)
        return ((images.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).cpu()

    def binned_size(self, height: int, width: int) -> tuple[int, int]:
        """The bucket (height, width) a request is sampled at under resolution binning: the closest h/w of
        ``diffusion.data.buckets.binning_table`` at this pipeline's square base resolution (diffusers'
        ``PixArtAlphaPipeline`` / ``PixArtSigmaPipeline`` tables: 33 buckets at 256 / 512 / 1024 px, 40 at 2048)."""
        if self.resolution[0] != self.resolution[1]:
            raise ValueError(f"resolution binning needs a square base resolution, got {self.resolution}")
        table = binning_table(self.resolution[0], self.codec.downsample * self.model.patch_size)
        return closest_bucket(height, width, table)[1]

    def __call__(self, prompts: Sequence[str], seed: int = 0, binning: bool = False, **sampler) -> torch.Tensor:
        """uint8 images (B, 3, H, W) for ``prompts``; ``sampler`` keywords are those of :class:`SamplerConfig`, plus
        ``height``, ``width`` and a ControlNet's ``control`` (see :meth:`sample_latents`).

        ``binning`` (diffusers' ``use_resolution_binning``): sample at :meth:`binned_size` of (height, width), then
        resize and centre-crop the images back to (height, width); a ``control`` must then have the bucket's size."""
        extra = {k: sampler.pop(k) for k in ("height", "width", "control") if k in sampler}
        size = None
        if binning:
            size = (extra.get("height") or self.resolution[0], extra.get("width") or self.resolution[1])
            extra["height"], extra["width"] = self.binned_size(*size)
        return self.decode(self.sample_latents(prompts, SamplerConfig(**sampler), seed=seed, **extra), size)
