"""Latents from a diffusers pipeline and their comparison with ours, shared by the export and conversion tests."""

import torch


def diffusers_latents(pipe, size: int, seed: int, output_type: str = "latent", **kwargs) -> torch.Tensor:
    """``pipe``'s final latents for a ``size``² image from a CPU generator seeded ``seed`` (no binning, raw
    captions; ``output_type="pt"``: the decoded images); ``kwargs`` go to the pipeline call (prompt, guidance,
    timesteps, ...)."""
    return pipe(
        height=size,
        width=size,
        use_resolution_binning=False,
        clean_caption=False,
        output_type=output_type,
        generator=torch.Generator("cpu").manual_seed(seed),
        **kwargs,
    ).images


def assert_same_latents(theirs: torch.Tensor, ours: torch.Tensor, tolerance: float = 1e-6) -> None:
    """Equal up to ``tolerance`` times their scale. A random model is far from eps(x_T) = noise, so
    x0 = (x - sqrt(1-a) eps) / sqrt(a) reaches |x0| ~ 1e3 at t=999 (1 / sqrt(a_999) = 157): compare relative to that
    scale (diffusers keeps fp32 schedule tables, ours fp64)."""
    scale = max(1.0, ours.abs().max().item())
    torch.testing.assert_close(theirs, ours, rtol=0, atol=tolerance * scale)
