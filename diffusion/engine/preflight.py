"""Checks run by the trainer before step 1, so that a run fails in its first seconds instead of hours later.

A PixArt-α/δ run (§3.3: thousands of steps, resumed many times) otherwise meets its text encoder and codec only at the
first validation, after that many steps of training and before their checkpoint; a work dir that is not writable or a
disk that cannot hold one checkpoint are found at the first save. Each check raises an error naming the config key or
path; the caller logs what the checks report.
"""

import errno
import os
import shutil
import uuid
from collections.abc import Callable, Iterable
from pathlib import Path

import torch

from diffusion.config import check_codec, resolve_section
from diffusion.registry import DATA_SAMPLERS, METHODS, MODELS, check_keys

GIB = 2**30


def check_sections(cfg) -> tuple[dict | None, dict]:
    """Key checks of the ``text_encoder`` (when present) and ``codec`` sections; returns both resolved.

    ``codec`` is required (the trainer needs its ``scale_factor``); its keys are checked against the codec class. The
    ``model``, ``method`` and ``data_sampler`` keys are checked against their constructors here too (the registries
    check them again at build time, with the arguments the trainer adds), so a misspelt one fails before the work dir
    is created.
    """
    for section, registry in (("model", MODELS), ("method", METHODS), ("data_sampler", DATA_SAMPLERS)):
        if cfg.get(section):
            check_keys(registry, cfg[section], section, check_missing=False)
    if cfg.get("codec") is None:
        raise KeyError("missing required top-level config key(s) ['codec'] (needed for scale_factor)")
    text_cfg = resolve_section("text_encoder", cfg.get("text_encoder")) if cfg.get("text_encoder") else None
    codec_cfg = check_codec(cfg.codec)
    data_len = cfg.data.get("max_length") if hasattr(cfg.data, "get") else None
    if text_cfg is not None and data_len is not None and data_len != text_cfg["max_length"]:
        raise KeyError(
            f"config key 'text_encoder.max_length' = {text_cfg['max_length']} differs from 'data.max_length' = "
            f"{data_len}: validation prompts would be encoded to another length than the training captions"
        )
    return text_cfg, codec_cfg


# cache meta.json key -> the config key that sets it
_CONFIG_KEYS = {
    "codec": "codec.type",
    "latent_channels": "codec.downsample",
    "downsample": "codec.downsample",
    "scale_factor": "codec.scale_factor",
    "vae": "codec.path",
    "vae_fingerprint": "codec.path",
    "text_encoder": "text_encoder.path",
    "fingerprint": "text_encoder.path",
    "max_length": "text_encoder.max_length",
    "clean_caption": "text_encoder.clean_caption",
}


def check_caches(cfg, dataset, info: Callable[[str], None] | None = None) -> list[str]:
    """Compare the config's ``codec`` and ``text_encoder`` (no weights loaded) with the ``meta.json`` of the caches
    ``dataset`` reads (a :class:`~diffusion.data.FeatureDataset`; other datasets are not checked).

    A differing VAE, codec type or geometry, T5, ``max_length`` or ``clean_caption`` raises ValueError naming the
    meta.json file and each config key. Returns warnings: caches without meta.json (older extractions). A differing
    ``scale_factor`` is no mismatch: the caches hold the unscaled posterior, which prepare_batch scales by the
    config's (the embedded default trains at 10 on caches written at 1, as designed); it is passed to ``info`` once
    (the trainer's train.log), for the record.
    """
    from diffusion.data.features import caption_dir
    from diffusion.data.provenance import config_caption_meta, config_codec_meta, meta_mismatch, read_meta

    if not hasattr(dataset, "latent_dir"):
        return []
    codec = config_codec_meta(cfg["codec"])
    expected = {Path(dataset.latent_dir): codec}
    if getattr(dataset, "load_control", False):
        expected[Path(dataset.control_dir)] = codec
    if cfg.get("text_encoder"):
        expected[caption_dir(dataset.root)] = config_caption_meta(resolve_section("text_encoder", cfg["text_encoder"]))
    notes, rescaled = [], []
    for directory, current in expected.items():
        recorded = read_meta(directory)
        if not recorded:
            notes.append(f"{directory} has no meta.json (an older extraction): its producer cannot be checked")
            continue
        diff = meta_mismatch({k: v for k, v in recorded.items() if k in current}, current)
        if "scale_factor" in diff:
            rescaled.append((directory, *diff.pop("scale_factor")))
        lines = [f"\n  {_CONFIG_KEYS[k]} ({k}): cache has {a!r}, config has {b!r}" for k, (a, b) in diff.items()]
        if lines:
            raise ValueError(
                f"{directory / 'meta.json'}: the cache was extracted with other settings than this config:"
                + "".join(lines)
                + "\nre-extract it (tools/extract_features.py --redo) or set the config key(s) to the cache's values"
            )
    if rescaled and info is not None:
        written = sorted({a for _, a, _ in rescaled})
        info(
            f"codec.scale_factor {rescaled[0][2]!r} scales the cached posteriors of {[d.name for d, *_ in rescaled]} "
            f"(extracted with scale_factor {written[0] if len(written) == 1 else written}): the caches hold the "
            "unscaled posterior, so this is expected, not a mismatch"
        )
    return notes


def check_work_dir(work_dir: str | os.PathLike) -> Path:
    """Create ``work_dir`` and prove it writable by writing, fsyncing and deleting a probe file."""
    work_dir = Path(work_dir)
    probe = work_dir / f".write_probe_{uuid.uuid4().hex}"
    try:
        work_dir.mkdir(parents=True, exist_ok=True)
        with open(probe, "wb") as f:
            f.write(b"probe")
            f.flush()
            os.fsync(f.fileno())
        probe.unlink()
    except OSError as error:
        raise OSError(error.errno, f"work dir {work_dir} is not writable: {error.strerror or error}") from error
    return work_dir


def remove_if_empty(work_dir: str | os.PathLike) -> None:
    """Remove ``work_dir`` if nothing was written into it (a run that failed to start); anything else stays."""
    try:
        Path(work_dir).rmdir()
    except OSError:  # not empty, or already gone (another rank)
        pass


def checkpoint_bytes(params: Iterable[torch.Tensor], trainable: Iterable[torch.Tensor], ema: bool) -> int:
    """Estimated size of one checkpoint: weights (+ EMA copy) in their dtype plus two fp32 Adam moments per trainable
    element (the optimizer state dominates: 2/3 of a full fine-tune's checkpoint)."""
    weights = sum(p.numel() * p.element_size() for p in params)
    return weights * (2 if ema else 1) + 2 * 4 * sum(p.numel() for p in trainable)


def check_disk_space(work_dir: str | os.PathLike, needed: int, keep_last: int) -> str | None:
    """Raise ``OSError(ENOSPC)`` when ``work_dir`` cannot hold even one checkpoint of ``needed`` bytes; return a
    warning when it cannot hold ``keep_last`` of them plus the one being written, else None."""
    free = shutil.disk_usage(work_dir).free
    if free < needed:
        raise OSError(
            errno.ENOSPC,
            f"no space left on device for a checkpoint in {work_dir}: {free / GIB:.3g} GiB free, one checkpoint "
            f"takes ~{needed / GIB:.3g} GiB",
        )
    wanted = needed * (max(keep_last, 1) + 1)
    if free < wanted:
        return (
            f"{work_dir} has {free / GIB:.3g} GiB free; {max(keep_last, 1)} kept checkpoint(s) plus the one being "
            f"written take ~{wanted / GIB:.3g} GiB: a later save may fail (the previous checkpoint is kept then)"
        )
    return None


def check_sampling(pipeline, prompts: list[str], sampler: dict, seed: int, control=None) -> tuple[int, ...]:
    """Encode every validation prompt and sample them with one denoising step, exactly as validation will (text
    encoder, model forward on real captions, codec decode), leaving every RNG stream untouched.

    ``control``: a ControlNet run's validation control maps (passed as ``control=``). Returns the shape of the images
    (N, 3, H, W). Errors are re-raised naming the check.
    """
    dry = {**sampler, "steps": 1}
    if control is not None:
        dry["control"] = control
    if dry.get("timesteps"):
        dry["timesteps"] = list(dry["timesteps"])[:1]
    devices = [torch.cuda.current_device()] if torch.cuda.is_available() else []
    try:
        with torch.random.fork_rng(devices=devices), torch.no_grad():
            images = pipeline(list(prompts), seed=seed, **dry)
    except Exception as error:
        raise RuntimeError(
            f"preflight: sampling the validation prompts failed before step 1 (check the config's text_encoder, "
            f"codec, validation.sampler and the model's caption_channels): {type(error).__name__}: {error}"
        ) from error
    if images.ndim != 4 or images.shape[0] != len(prompts) or images.shape[1] != 3:
        raise RuntimeError(f"preflight: validation sampling returned shape {tuple(images.shape)}, not (N, 3, H, W)")
    return tuple(images.shape)
