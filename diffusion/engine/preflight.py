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
from diffusion.methods.base import needs_teacher
from diffusion.model.io import read_null_caption, read_null_file
from diffusion.paths import config_path
from diffusion.protocols import FeatureCache
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


def check_weights(cfg) -> None:
    """The weight sources before the work dir is made (docs/design.md "Building"): the ``weights`` section's keys
    (older configs' keys moved in), a teacher for a method that distils one, and the null caption files, each of
    the shape it is used at: ``weights.null_caption`` the model's ``y_embedding`` (1, 1, ``model_max_length``,
    ``caption_channels``), a ``method.null_caption`` file the captions' (1, 1, ``text_encoder.max_length``,
    ``caption_channels``). Each error names the key and the file (a wrong null caption otherwise fails at the first
    forward, after the run has started)."""
    from diffusion.build import weight_sources  # lazy: build imports the engine's neighbours

    weights = weight_sources(cfg)
    method = cfg.get("method") or {}
    method_cls = METHODS.get(method.get("type"))
    distils = needs_teacher(method_cls)
    if distils and weights.teacher is None:
        raise KeyError(
            f"method {method['type']} distils a pretrained teacher: name it in the config's weights section "
            "(weights.teacher; the student starts from it unless weights.base names another network)"
        )
    if weights.teacher_apart and method_cls is not None and not distils:
        raise KeyError(f"weights.teacher is set but method {method['type']} distils no teacher: drop it")
    method_file = method.get("null_caption", "learned")
    method_file = None if method_file in (None, "learned") else Path(method_file)
    if weights.null_caption is None and method_file is None:
        return
    length, channels = null_caption_shape(cfg)
    if weights.null_caption is not None:
        path = config_path(weights.null_caption, "weights.null_caption", required=False)  # as build.py opens it
        if path.is_file():
            read_null_caption(path, length, channels)  # the ValueError names the file and the expected shape
        elif weights.base is None:
            raise FileNotFoundError(
                f"weights.null_caption {path} not found, and a model trained from scratch has no y_embedding of its "
                f"own: write T5('') there with tools/make_null_caption.py --max-length {length} --out {path}"
            )
    if method_file is not None:
        _check_method_null_caption(cfg, method_file, length, channels)


def null_caption_shape(cfg) -> tuple[int, int]:
    """(``model_max_length``, ``caption_channels``) of ``cfg.model``'s null caption ``y_embedding``, from the model
    built on the meta device (no memory, no weights)."""
    with torch.device("meta"):
        model = MODELS.build(dict(cfg["model"]))
    y_embedding = getattr(getattr(model, "y_embedder", None), "y_embedding", None)
    if y_embedding is None:
        raise KeyError(f"a null caption file is configured but model {cfg['model']['type']} has no y_embedding")
    return tuple(y_embedding.shape)


def _check_method_null_caption(cfg, path: Path, model_length: int, channels: int) -> None:
    """``method.null_caption``: the LCM teacher's unconditional input, used under each caption's mask, so of the
    captions' length (``text_encoder.max_length``, else ``data.max_length``, else the model's), with an optional
    ``y_mask`` (1, L)."""
    text = cfg.get("text_encoder") or {}
    data = cfg.get("data") or {}
    length = text.get("max_length") or data.get("max_length") or model_length
    write = f"write T5('') there with tools/make_null_caption.py --max-length {length} --out {path}"
    if not path.is_file():
        raise FileNotFoundError(f"method.null_caption {path} not found: {write} (or set null_caption='learned')")
    tensors = read_null_file(path, "method.null_caption")
    y, mask = tensors["y"], tensors.get("y_mask")
    if tuple(y.shape) != (1, 1, length, channels) or (mask is not None and mask.shape[-1:] != (length,)):
        got = f"y {tuple(y.shape)}" + ("" if mask is None else f", y_mask {tuple(mask.shape)}")
        raise ValueError(
            f"method.null_caption {path} holds {got}; the teacher's unconditional branch needs y (1, 1, {length}, "
            f"{channels}) [and y_mask (1, {length})] (text_encoder.max_length, model.caption_channels): {write}"
        )


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

    if not isinstance(dataset, FeatureCache):
        return []
    codec = config_codec_meta(cfg["codec"])
    expected = {Path(dataset.latent_dir): codec}
    if dataset.load_control:
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
