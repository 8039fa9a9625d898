"""Named sizes of the PixArt transformer (the official factory names), registered for configs' ``model.type``.

PixArt-alpha: ``PixArt_XL_2`` (256 / 512 px), ``PixArtMS_XL_2`` (1024-MS, PixArt-delta's LCM teacher). PixArt-Sigma:
``PixArtSigma_XL_2`` (256 px) and ``PixArtSigmaMS_XL_2`` (512 / 1024 / 2K-MS). Resolution-dependent keys
(``input_size``, ``pe_interpolation``) come from the config. ``*_tiny``: tests and the embedded default.
"""

from __future__ import annotations

from diffusion.model.pixart import PixArt, PixArtMS
from diffusion.registry import MODELS

XL_2 = dict(depth=28, hidden_size=1152, patch_size=2, num_heads=16)
SIGMA = dict(model_max_length=300)  # PixArt-Sigma's T5 length; PixArtMS also drops the micro-conditions
TINY = dict(depth=2, hidden_size=48, patch_size=2, num_heads=2, caption_channels=32, model_max_length=16)


@MODELS.register_module()
def PixArt_XL_2(**kwargs) -> PixArt:  # noqa: N802 (official factory name)
    """PixArt-XL/2: 28 blocks, width 1152, 16 heads, patch 2 (~611M parameters)."""
    return PixArt(**{**XL_2, **kwargs})


@MODELS.register_module()
def PixArtMS_XL_2(**kwargs) -> PixArtMS:  # noqa: N802
    """Multi-scale PixArt-XL/2 (the 1024-MS checkpoints and PixArt-delta's LCM teacher)."""
    return PixArtMS(**{**XL_2, **kwargs})


@MODELS.register_module()
def PixArt_tiny(**kwargs) -> PixArt:  # noqa: N802
    """A tiny PixArt for tests and the embedded default; every size argument can be overridden."""
    return PixArt(**{**TINY, **kwargs})


@MODELS.register_module()
def PixArtMS_tiny(**kwargs) -> PixArtMS:  # noqa: N802
    return PixArtMS(**{**TINY, **kwargs})


@MODELS.register_module()
def PixArtSigma_XL_2(**kwargs) -> PixArt:  # noqa: N802
    """PixArt-Sigma-XL/2 at a fixed resolution (``PixArt-Sigma-XL-2-256x256.pth``: input_size 32,
    pe_interpolation 0.5): PixArt-XL/2 with 300-token captions."""
    return PixArt(**{**XL_2, **SIGMA, **kwargs})


@MODELS.register_module()
def PixArtSigmaMS_XL_2(**kwargs) -> PixArtMS:  # noqa: N802
    """Multi-scale PixArt-Sigma-XL/2 (``PixArt-Sigma-XL-2-{512,1024,2K}-MS.pth``: input_size 64 / 128 / 256,
    pe_interpolation 1 / 2 / 4): 300-token captions, no micro-conditions."""
    return PixArtMS(**{**XL_2, **SIGMA, "micro_condition": False, **kwargs})
