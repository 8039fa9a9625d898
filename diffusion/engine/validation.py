"""Sample grids written during training (the qualitative progress of PixArt-δ Fig. 8 / Fig. 12 style snapshots), and
the memory-light way the trainer samples them (:class:`Validator`): prompts encoded once, the codec built before
step 1, EMA weights swapped into the trained network (no second copy of it)."""

import math
import os
from contextlib import contextmanager
from pathlib import Path

import torch
from PIL import Image
from torch import nn

from diffusion.engine import checkpoint as ckpt
from diffusion.engine import dist, parallel, preflight
from diffusion.engine.ema import EMA
from diffusion.engine.metrics import MetricLogger
from diffusion.protocols import ControlledModel


def make_grid(images: torch.Tensor, columns: int | None = None) -> torch.Tensor:
    """Tile uint8 images (N, 3, H, W) into one uint8 image (3, rows*H, columns*W); columns default to ⌈√N⌉."""
    n, c, h, w = images.shape
    columns = columns or math.ceil(math.sqrt(n))
    rows = math.ceil(n / columns)
    grid = torch.zeros(c, rows * h, columns * w, dtype=torch.uint8)
    for i, image in enumerate(images.to("cpu", torch.uint8)):
        r, col = divmod(i, columns)
        grid[:, r * h : (r + 1) * h, col * w : (col + 1) * w] = image
    return grid


def save_grid(images: torch.Tensor, path: str | os.PathLike, columns: int | None = None) -> Path:
    """Save uint8 images (N, 3, H, W) as one PNG grid at ``path`` (parents created); returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(make_grid(images, columns).permute(1, 2, 0).numpy()).save(path)
    return path


class EncodedPrompts:
    """Caption features of the validation prompts, computed once; served to the ``Pipeline`` like a text encoder.

    At 1024 px the encoder is T5-XXL (4.7 B parameters): it runs once in bf16 on the device and is freed, instead of
    staying on rank 0 for the whole run. y: (P, 1, L, C), mask: (P, L), kept on the CPU.
    """

    def __init__(self, prompts: list[str], y: torch.Tensor, mask: torch.Tensor) -> None:
        self.index = {p: i for i, p in enumerate(prompts)}
        self.y, self.mask = y.cpu(), mask.cpu()

    @classmethod
    def from_config(cls, cfg, prompts: list[str], device: torch.device) -> "EncodedPrompts":
        from diffusion.build import build_text_encoder

        dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
        encoder = build_text_encoder(cfg, device, dtype)
        with torch.no_grad():
            y, mask = encoder.encode(list(prompts))
        encoded = cls(list(prompts), y.float(), mask)
        del encoder
        if device.type == "cuda":
            torch.cuda.empty_cache()
        return encoded

    def encode(self, prompts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        unknown = [p for p in prompts if p not in self.index]
        if unknown:
            raise KeyError(f"prompts not encoded for validation: {unknown}")
        rows = torch.tensor([self.index[p] for p in prompts])
        return self.y[rows], self.mask[rows]


def validation_control(val_cfg: dict, prompts: list[str], height: int, width: int) -> torch.Tensor | None:
    """The control maps a ControlNet run's validation grids follow: (1 | P, 3, height, width) uint8, or None.

    ``val_cfg['control']``: None; ``'embedded'`` (the exact edge maps of the embedded default's prompts); or image
    paths, one per prompt or one for all, turned into maps by ``val_cfg['annotator']`` (and ``hed_path``)."""
    control = val_cfg["control"]
    if control is None:
        return None
    if control == "embedded":
        from diffusion.data.embedded import prompt_edges

        if height != width:
            raise KeyError(f"validation.control='embedded' needs a square resolution, got {height}x{width}")
        return torch.from_numpy(prompt_edges(list(prompts), height)).permute(0, 3, 1, 2).contiguous()
    from diffusion.data.annotators import read_control_image

    paths = [control] if isinstance(control, str) else list(control)
    if len(paths) not in (1, len(prompts)):
        raise KeyError(f"validation.control has {len(paths)} images for {len(prompts)} prompts: give one or one each")
    try:
        maps = [read_control_image(p, height, width, val_cfg["annotator"], val_cfg["hed_path"]) for p in paths]
    except (FileNotFoundError, ValueError) as error:
        raise KeyError(f"validation.control: {error}") from error
    return torch.cat(maps)


def control_grid(control: torch.Tensor, images: torch.Tensor) -> tuple[torch.Tensor, int]:
    """Pairs (control map | sample) side by side, ⌈√N⌉ pairs a row: (2N, 3, H, W) and the grid's column count."""
    control = control.to(images.device, images.dtype).expand(images.shape[0], -1, -1, -1)
    return torch.stack([control, images], dim=1).flatten(0, 1), 2 * math.ceil(math.sqrt(images.shape[0]))


@contextmanager
def swapped_in(module: nn.Module, shadow: dict[str, torch.Tensor] | None):
    """Run the block with ``shadow`` (EMA weights, same names and shards as ``module``'s tensors) loaded into
    ``module`` in place, then put the trained weights back: sampling needs no second copy of the network on the
    device, only a CPU copy of this rank's trained tensors. ``shadow`` None: the module as it is."""
    if shadow is None:
        yield module
        return
    tensors = dict(module.named_parameters())
    tensors.update({n: b for n, b in module.named_buffers() if b.is_floating_point()})
    backup = {n: parallel.local_tensor(t).detach().to("cpu", copy=True) for n, t in tensors.items() if n in shadow}
    with torch.no_grad():
        for name in backup:
            parallel.local_tensor(tensors[name]).copy_(parallel.local_tensor(shadow[name]))
    try:
        yield module
    finally:
        if hasattr(module, "reshard"):  # FSDP2: free gathered weights before writing the shards back
            module.reshard()
        with torch.no_grad():
            for name, value in backup.items():
                parallel.local_tensor(tensors[name]).copy_(value)


class Validator:
    """The trainer's sample grids: ``validate(step, ema)`` samples the validation prompts with the EMA (else the
    current) weights of the trained network and saves ``samples/step_XXXXXXX.png``.

    Built before step 1 (the control maps read, the text encoder and codec checked by a one-step dry run). Under FSDP
    every rank samples (the forward is collective) and rank 0 saves; under DDP only rank 0 samples.

    Args:
        cfg: the run's config: ``text_encoder`` and ``codec`` build the pipeline, ``data.resolution`` sizes it.
        val_cfg: the resolved ``validation`` section.
        model: the trained network, unwrapped (FSDP2 shards it in place); the pipeline samples with it.
        sampler: sampler arguments when ``val_cfg['sampler']`` is None (the method's ``sampler_defaults()``).
        generator: the training noise stream, left where it was by sampling.
        work_dir: the run directory (grids go to ``samples/``).
        logger: the run's logger (a ControlNet without validation control warns; grids go to wandb).
        device: where the prompts are encoded.
    """

    def __init__(
        self,
        cfg,
        val_cfg: dict,
        model: nn.Module,
        sampler: dict,
        generator: torch.Generator,
        work_dir: str | os.PathLike,
        logger: MetricLogger,
        device: torch.device,
    ) -> None:
        self.cfg, self.val_cfg, self.model, self.generator = cfg, val_cfg, model, generator
        self.work_dir, self.logger, self.device = Path(work_dir), logger, device
        self.prompts = list(val_cfg["prompts"])
        self.sampler = dict(val_cfg["sampler"] or sampler)
        self.control = self._control()
        self.pipeline = None
        if self._samples():  # text encoder, codec and prompts now, not at the first grid after hours of training
            self.pipeline = self.build_pipeline(model)
            preflight.check_sampling(self.pipeline, self.prompts, self.sampler, val_cfg["seed"], self.control)
            if hasattr(model, "reshard"):  # FSDP2 keeps the root's weights gathered after a no-grad forward
                model.reshard()

    def _samples(self) -> bool:
        return dist.is_main() or parallel.is_sharded(self.model)

    def _control(self) -> torch.Tensor | None:
        """The control maps of a ControlNet run's grids (``validation.control``), read before step 1."""
        controlled = isinstance(self.model, ControlledModel)
        if self.val_cfg["control"] is not None and not controlled:
            raise KeyError("validation.control is set but the model is no ControlNet (no 'controlnet' section)")
        if self.val_cfg["control"] is None:
            if controlled:
                self.logger.warning("validation.control is not set: validation grids sample without control")
            return None
        resolution = self.cfg["data"]["resolution"]
        height, width = (resolution, resolution) if isinstance(resolution, int) else tuple(resolution)
        return validation_control(self.val_cfg, self.prompts, height, width)

    def build_pipeline(self, model: nn.Module):
        """The sampling pipeline of the grids (override or monkeypatch in tests): the validation prompts are encoded
        once (T5 in bf16 on the device, then freed) and the codec is built; no T5 stays resident."""
        from diffusion.build import build_codec
        from diffusion.pipeline import Pipeline
        from diffusion.schedulers import DiffusionProcess

        prompts = EncodedPrompts.from_config(self.cfg, list(self.val_cfg["prompts"]), self.device)
        codec, process = build_codec(self.cfg, self.device), DiffusionProcess.from_config(self.cfg)
        return Pipeline(model, prompts, codec, self.cfg["data"]["resolution"], process=process)

    @torch.no_grad()
    def validate(self, step: int, ema: EMA | None) -> Path | None:
        """Sample the grid of ``step`` with ``ema``'s weights swapped into the network (its own wait on the CPU);
        the path of the saved PNG on rank 0, else None. Collective (a barrier; every rank samples under FSDP)."""
        path = None
        if self._samples():
            rng = ckpt.rng_state(self.generator)  # sampling must not shift the training noise stream
            if self.pipeline is None:
                self.pipeline = self.build_pipeline(self.model)
            control = {} if self.control is None else {"control": self.control}
            with swapped_in(self.model, ema.shadow if ema is not None else None):
                images = self.pipeline(self.prompts, seed=self.val_cfg["seed"], **self.sampler, **control)
            columns = None
            if self.control is not None:  # each sample beside the control map it follows
                images, columns = control_grid(self.control, images)
            if dist.is_main():
                path = save_grid(images, self.work_dir / "samples" / f"{ckpt.step_name(step)}.png", columns)
                self.logger.image(step, path, caption=" | ".join(self.prompts))
            ckpt.set_rng_state(rng, self.generator)
        dist.barrier()
        return path
