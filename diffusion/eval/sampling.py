"""Sample folders for evaluation: one PNG per prompt line plus ``prompts.txt``, from a config and a checkpoint.

PixArt-δ's claim (§3.3, §5) is that LCM at 4 steps is close to the teacher (DPM-Solver++) at 14–20 steps and far
better than the teacher at 4; these folders feed FID and prompt-attribute accuracy for each sampler setting.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
from tqdm import tqdm

from diffusion.eval.images import PROMPTS_FILE, save_samples
from diffusion.pipeline import Pipeline, SamplerConfig


def read_prompts(path: str | Path) -> list[str]:
    """One prompt per line of a text file, blank lines skipped."""
    return [line.strip() for line in Path(path).read_text().splitlines() if line.strip()]


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
) -> list[Path]:
    """Sample ``prompts`` in order into ``out/00000.png, ...`` and write ``out/prompts.txt`` (same order).

    Image ``i`` starts from noise seeded by ``seed + i``, so the dpm/ddim images do not depend on ``batch_size``
    (the LCM sampler's re-noising uses one generator per batch, seeded by ``seed`` + the batch's first index).

    Returns:
        the PNG paths, in prompt order.
    """
    config = SamplerConfig(name=sampler, steps=steps, cfg_scale=cfg_scale)  # None: the sampler's defaults
    height, width = pipe.resolution
    down = pipe.codec.downsample
    latent_shape = (pipe.model.in_channels, height // down, width // down)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for start in tqdm(range(0, len(prompts), batch_size), desc=f"{sampler} x{config.steps}", disable=not progress):
        batch = list(prompts[start : start + batch_size])
        x_T = torch.stack(
            [
                torch.randn(latent_shape, generator=torch.Generator().manual_seed(seed + start + i))
                for i in range(len(batch))
            ]
        )
        z = pipe.sample_latents(batch, config, seed=seed + start, x_T=x_T)
        paths += save_samples(pipe.decode(z), out, start=start)
    (out / PROMPTS_FILE).write_text("".join(p + "\n" for p in prompts))
    return paths
