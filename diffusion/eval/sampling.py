"""Sample folders for evaluation: one PNG per prompt line plus ``prompts.txt`` and ``manifest.json``, from a config
and a checkpoint, sharded across the ranks of ``torchrun`` and resumable.

PixArt-δ (§3.3, §5) compares LCM at 4 steps with the teacher (DPM-Solver++) at 4 and 14–20 steps; these folders feed
FID, CLIP score and prompt-attribute accuracy for each setting. A 30K-prompt COCO folder is written by 8 GPUs in one
run, and a killed run picks up where it stopped, but only into a folder made with the same settings (see
:mod:`diffusion.eval.manifest`).
"""

from __future__ import annotations

import inspect
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from tqdm import tqdm

from diffusion.eval.images import list_images
from diffusion.eval.manifest import check_folder, prepare_folder, prompts_sha256
from diffusion.pipeline import Pipeline, SamplerConfig


def read_prompts(path: str | Path) -> list[str]:
    """One prompt per line of a text file (e.g. the 30K COCO-val captions), blank lines skipped."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"prompt file not found: {path}")
    prompts = [line.strip() for line in path.read_text().splitlines() if line.strip()]
    if not prompts:
        raise ValueError(f"{path} has no prompts")
    return prompts


def image_name(index: int) -> str:
    """File name of global image ``index``: ``00000.png`` ... (wider past 99999, still sorting by index)."""
    return f"{index:05d}.png"


def shard_batches(num: int, batch_size: int, rank: int = 0, world_size: int = 1) -> list[range]:
    """The global batches ``[b·bs, (b+1)·bs)`` of ``num`` indices that rank ``rank`` of ``world_size`` samples:
    every ``world_size``-th batch from ``rank`` on, so every index belongs to exactly one rank."""
    if not 0 <= rank < world_size:
        raise ValueError(f"rank {rank} outside world size {world_size}")
    return [range(s, min(s + batch_size, num)) for s in range(rank * batch_size, num, batch_size * world_size)]


def _save_atomic(image: torch.Tensor, path: Path) -> None:
    """uint8 (3, H, W) → ``path`` via a temporary name, so a kill never leaves a truncated PNG under the final name."""
    tmp = path.with_name(f".{path.name}.tmp")
    Image.fromarray(image.permute(1, 2, 0).numpy()).save(tmp, format="PNG")
    os.replace(tmp, path)


def _read_controls(paths: Sequence[Path], height: int, width: int) -> torch.Tensor:
    """uint8 (B, 3, height, width) control images (bilinear resize when their size differs)."""
    arrays = []
    for path in paths:
        with Image.open(path) as image:
            image = image.convert("RGB")
            arrays.append(np.asarray(image if image.size == (width, height) else image.resize((width, height))))
    return torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).contiguous()


def sample_manifest(
    pipe: Pipeline,
    prompts: Sequence[str],
    config: SamplerConfig,
    seed: int,
    batch_size: int,
    control: str | Path | None,
    identity: Mapping[str, Any] | None,
) -> dict[str, Any]:
    """Everything an image depends on: ``identity`` (the caller's config hash and checkpoint, see
    :func:`diffusion.eval.manifest.file_identity`) plus sampler, seed, batch size, resolution, dtype and prompts."""
    return {
        **(identity or {}),
        "sampler": {"name": config.name, "steps": config.steps, "cfg_scale": config.cfg_scale},
        "seed": seed,
        "batch_size": batch_size,
        "resolution": list(pipe.resolution),
        "dtype": str(next(pipe.model.parameters()).dtype),
        "control": None if control is None else str(Path(control).resolve()),
        "num_prompts": len(prompts),
        "prompts_sha256": prompts_sha256(prompts),
    }


def _barrier(world_size: int) -> None:
    if world_size > 1 and torch.distributed.is_initialized():
        torch.distributed.barrier()


def sample_to_folder(
    pipe: Pipeline,
    prompts: Sequence[str],
    out: str | Path,
    sampler: str = "dpm",
    steps: int | None = None,
    cfg_scale: float | None = None,
    seed: int = 0,
    batch_size: int = 16,
    progress: bool = True,
    rank: int = 0,
    world_size: int = 1,
    control: str | Path | None = None,
    identity: Mapping[str, Any] | None = None,
    overwrite: bool = False,
) -> list[Path]:
    """Sample ``prompts`` into ``out/00000.png, ...`` (named by global index); write ``out/prompts.txt`` and
    ``out/manifest.json`` (:func:`sample_manifest`) before the first image.

    Sharding and resuming: this rank samples its :func:`shard_batches`; a batch whose PNGs all exist already is
    skipped, and PNGs are written atomically, so rerunning a killed job (with any number of ranks) writes each
    missing image once and never touches a finished one. A folder made with another manifest (or images without one)
    is refused, naming the differing keys, unless ``overwrite`` (its PNGs are deleted first).

    Determinism: image ``i`` starts from noise seeded by ``seed + i``; the LCM sampler's re-noising uses one
    generator per batch, seeded by ``seed`` + the batch's first index. An image therefore depends on ``seed`` and
    ``batch_size`` only, not on the number of ranks or on where a run was interrupted.

    Args:
        sampler, steps, cfg_scale: :class:`SamplerConfig` (None: ``SAMPLER_DEFAULTS``); LCM n steps, or the
            teacher's DPM-Solver++/DDIM with CFG.
        control: a folder of control images (a ControlNet checkpoint; PixArt-δ §4), the i-th sorted image for
            prompt i, resized to the pipeline's resolution.
        identity: what the caller knows of the model (config hash, checkpoint), recorded in the manifest.

    Returns:
        the PNG paths this rank wrote in this call.
    """
    config = SamplerConfig(name=sampler, steps=steps, cfg_scale=cfg_scale)  # None: the sampler's defaults
    height, width = pipe.resolution
    down = pipe.codec.downsample
    latent_shape = (pipe.model.in_channels, height // down, width // down)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    controls = None
    if control is not None:
        if "control" not in inspect.signature(pipe.sample_latents).parameters:
            raise ValueError(
                "this Pipeline does not take control= yet; a control folder needs the ControlNet pipeline"
            )
        controls = list_images(control)
        if len(controls) < len(prompts):
            raise ValueError(f"control folder {control} has {len(controls)} images for {len(prompts)} prompts")
    manifest = sample_manifest(pipe, prompts, config, seed, batch_size, control, identity)
    check_folder(out, manifest, overwrite)  # every rank, before any rank writes: all see the same folder
    _barrier(world_size)
    if rank == 0:
        prepare_folder(out, manifest, prompts, overwrite)
    _barrier(world_size)  # no rank samples into a folder rank 0 is still clearing
    batches = shard_batches(len(prompts), batch_size, rank, world_size)
    todo = [b for b in batches if not all((out / image_name(i)).is_file() for i in b)]
    written = []
    desc = f"{sampler} x{config.steps} rank {rank}/{world_size}"
    total, done = sum(len(b) for b in batches), sum(len(b) for b in batches if b not in todo)
    with tqdm(total=total, initial=done, unit="img", desc=desc, disable=not progress) as bar:
        for indices in todo:
            generators = [torch.Generator().manual_seed(seed + i) for i in indices]
            x_T = torch.stack([torch.randn(latent_shape, generator=g) for g in generators])
            extra = {}
            if controls is not None:
                extra["control"] = _read_controls([controls[i] for i in indices], height, width)
            z = pipe.sample_latents([prompts[i] for i in indices], config, seed=seed + indices[0], x_T=x_T, **extra)
            for i, image in zip(indices, pipe.decode(z)):
                path = out / image_name(i)
                if not path.is_file():  # a batch cut short by a kill: keep the images it did write
                    _save_atomic(image, path)
                    written.append(path)
            bar.update(len(indices))
    return written
