"""Random-weight components at real or reduced architecture, and interleaved timing, for the benchmarks.

PixArt-delta Table 2 (speed at 1024², batch 1) and §3.3 / Table 1 (memory) are about *architectures*, not weights:
``tools/benchmark_speed.py``, ``tools/benchmark_sampling.py`` and ``tools/benchmark_memory.py`` build the transformer
from a repo config through :func:`diffusion.build.build_model`, and T5 / the SD VAE from their published configs with
random weights (nothing is downloaded). A :class:`Size` names what is built; ``SIZES`` holds the full-size
architectures (GPU), the reduced size the CPU runs use, and a tiny size for the smoke tests. Memory accounting (bytes
by owner, peaks, reports) is :mod:`diffusion.bench.memory`; the memory benchmark's synthetic rows are
:mod:`diffusion.bench.memory_rows`.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch
from torch import nn

from diffusion.build import build_model
from diffusion.data.text_encoder import TextEncoder
from diffusion.paths import repo_path

LCM_CONFIG = repo_path("configs/lcm/pixartms_xl2_img1024_lcm.py")
# T5-v1.1-XXL encoder (the PixArt caption encoder, 4.76B parameters) and the SD VAE (sd-vae-ft-ema, 83.7M).
T5_XXL = dict(vocab_size=32128, d_model=4096, d_kv=64, num_heads=64, d_ff=10240, num_layers=24)
SD_VAE = dict(block_out_channels=(128, 256, 512, 512), layers_per_block=2, norm_num_groups=32)
SMALL_VAE = dict(block_out_channels=(8, 16, 32, 32), layers_per_block=1, norm_num_groups=8)
# ByT5 tokenises bytes (no vocabulary file to download): 20 and 17 tokens, like typical prompts under T5.
PROMPTS = ("a cat on a red sofa", "a red lighthouse")


@dataclass(frozen=True)
class Size:
    """What a benchmark builds: transformer overrides of the LCM config, T5 and VAE configs, image size."""

    name: str
    resolution: int
    model: dict = field(default_factory=dict)  # overrides of the config's model (depth, width, ...)
    t5: dict = field(default_factory=lambda: dict(T5_XXL))
    vae: dict = field(default_factory=lambda: dict(SD_VAE))

    def describe(self) -> str:
        m = {"depth": 28, "hidden_size": 1152, **self.model}
        vae = "SD-VAE" if self.vae == SD_VAE else f"VAE channels {self.vae['block_out_channels']}"
        return (
            f"{self.name}: PixArt depth {m['depth']} width {m['hidden_size']}, T5 {self.t5['num_layers']} layers of "
            f"width {self.t5['d_model']}, {vae}, {self.resolution}² px"
        )


SIZES = {
    "full": Size("full", 1024),
    # CPU: XL width (the real per-block cost), 2 blocks; one full-width T5-XXL layer; a small VAE (the SD VAE alone
    # takes tens of seconds per 256² image on two cores).
    "cpu": Size("cpu", 256, dict(depth=2), dict(T5_XXL, num_layers=1), dict(SMALL_VAE)),
    "tiny": Size(
        "tiny",
        64,
        dict(depth=2, hidden_size=48, num_heads=2, caption_channels=32),
        dict(vocab_size=384, d_model=32, d_kv=8, num_heads=4, d_ff=64, num_layers=1),
        dict(SMALL_VAE),
    ),
}


def get_size(name: str, depth: int | None = None, resolution: int | None = None) -> Size:
    """``SIZES[name]`` with optional depth / resolution overrides."""
    if name not in SIZES:
        raise KeyError(f"unknown size {name!r}; expected one of {sorted(SIZES)}")
    size = SIZES[name]
    if depth is not None:
        size = replace(size, model={**size.model, "depth": depth})
    if resolution is not None:
        size = replace(size, resolution=resolution)
    return size


def random_pixart(size: Size, config: str | Path = LCM_CONFIG, **overrides) -> nn.Module:
    """The config's transformer (PixArtMS-XL/2 for the LCM config) at ``size`` with N(0, 0.02) weights.

    Below 1024 px the fixed-resolution PixArt is built: diffusers' ``PixArtAlphaPipeline`` feeds micro-conditions
    only to a 128-latent transformer, and both pipelines must run the same network.
    """
    from mmengine.config import Config

    cfg = Config.fromfile(str(config))
    model_cfg = dict(cfg.model)
    latent = size.resolution // 8
    if latent != 128:
        model_cfg["type"] = model_cfg["type"].replace("PixArtMS", "PixArt")
    model_cfg.update(input_size=latent, pe_interpolation=max(size.resolution / 512, 1.0), **size.model, **overrides)
    torch.manual_seed(0)
    model = build_model({"model": model_cfg}, load_weights=False)
    with torch.no_grad():  # no layer left at its zero init, so every path computes something
        for p in model.parameters():
            p.normal_(std=0.02)
    return model


def random_t5(
    size: Size, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32, max_length: int = 120
) -> TextEncoder:
    """A random T5 encoder of ``size.t5`` with the ByT5 tokenizer, as a :class:`TextEncoder` (``max_length`` tokens:
    120 for PixArt-α, 300 for Σ)."""
    from transformers import ByT5Tokenizer, T5Config, T5EncoderModel

    config = T5Config(**size.t5, feed_forward_proj="gated-gelu", dropout_rate=0.0, is_encoder_decoder=False)
    config.use_cache = False
    torch.manual_seed(1)
    with torch.device(device):  # built in place: T5-XXL does not fit twice in host memory on small machines
        model = T5EncoderModel(config).to(dtype)
    return TextEncoder(ByT5Tokenizer(), model, max_length=max_length)


def random_vae(size: Size, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32) -> nn.Module:
    """A random diffusers ``AutoencoderKL`` of ``size.vae`` (4 latent channels, downsample 8)."""
    from diffusers import AutoencoderKL

    depth = len(size.vae["block_out_channels"])
    torch.manual_seed(2)
    with torch.device(device):
        vae = AutoencoderKL(
            down_block_types=("DownEncoderBlock2D",) * depth,
            up_block_types=("UpDecoderBlock2D",) * depth,
            latent_channels=4,
            sample_size=size.resolution,
            **size.vae,
        )
    vae = vae if dtype == torch.float32 else vae.to(dtype)
    return vae.eval().requires_grad_(False)


def sync(device: str | torch.device) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def timed(fn: Callable, device: str | torch.device) -> float:
    """Wall seconds of ``fn()``, synchronising the GPU before and after."""
    sync(device)
    start = time.perf_counter()
    fn()
    sync(device)
    return time.perf_counter() - start


def measure(fns: dict[str, Callable], runs: int, device: str | torch.device, warmup: int = 1) -> dict[str, float]:
    """Median seconds of each function over ``runs`` interleaved rounds after ``warmup`` rounds: each round runs
    every function once, so drifts in machine load (other jobs) hit all of them alike."""
    times: dict[str, list[float]] = {name: [] for name in fns}
    with torch.no_grad():
        for run in range(warmup + runs):
            for name, fn in fns.items():
                elapsed = timed(fn, device)
                if run >= warmup:
                    times[name].append(elapsed)
    return {name: statistics.median(v) for name, v in times.items()}


def machine() -> str:
    """The device the numbers come from, in words."""
    if torch.cuda.is_available():
        return f"{torch.cuda.get_device_name()} (torch {torch.__version__})"
    return f"CPU, {torch.get_num_threads()} threads (torch {torch.__version__})"


def diffusers_twin(model: nn.Module) -> nn.Module:
    """diffusers' ``PixArtTransformer2DModel`` holding ``model``'s weights (same device and dtype)."""
    from diffusers import PixArtTransformer2DModel

    from diffusion.model.diffusers_format import diffusers_config, official_to_diffusers

    p = next(model.parameters())
    config = {k: v for k, v in diffusers_config(model).items() if not k.startswith("_")}
    twin = PixArtTransformer2DModel(**config)
    twin.load_state_dict(official_to_diffusers(model.state_dict())[0], strict=True)
    twin = twin.to(p.device) if p.dtype == torch.float32 else twin.to(p.device, p.dtype)
    return twin.eval().requires_grad_(False)
