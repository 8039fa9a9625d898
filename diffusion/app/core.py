"""The web app's models and requests, without the page: what ``tools/app.py`` serves and its tests call directly.

Loading goes through ``diffusion.build`` only: the teacher from ``--checkpoint teacher=`` or the config's teacher
(``weights.teacher``, else ``weights.base``), built as the config's teacher network (``teacher_config``: without a
w-embedding), the PixArt-delta LCM student (§3) of any kind (full, LCM-LoRA, w-embedding) from ``--checkpoint lcm=``
as the config builds it; both share one text encoder and codec. A w-embedding student samples at its config's
``method.w`` (as ``tools/sample.py`` does).
Each request is checked first; a refused one raises :class:`InputError`, whose message the page shows as it is.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from mmengine.config import Config

from diffusion.build import DTYPES, load_pipeline, teacher_config, weight_sources
from diffusion.data import ensure_tiny_text_encoder
from diffusion.data.buckets import binning_table
from diffusion.methods import method_sampler
from diffusion.model import PixArtMS
from diffusion.model.io import resolve_checkpoint
from diffusion.paths import config_path, repo_path, shown
from diffusion.pipeline import SAMPLER_DEFAULTS, Pipeline
from diffusion.protocols import base_network, embeds_guidance

DEFAULT_CONFIG = repo_path("configs/lcm/tiny_lcm.py")  # the embedded default: committed teacher (weights.teacher)
DEFAULT_LCM = repo_path("assets/tiny_lcm/model.safetensors")
SAMPLER_LABELS = {"lcm": "LCM student", "dpm": "teacher, DPM-Solver++"}
STEP_LIMITS = {"lcm": (1, 8), "dpm": (1, 100)}  # LCM: PixArt-delta's 1-4 steps and a little beyond
CFG_LIMITS = (1.0, 20.0)
MAX_BATCH = 4
MAX_SEED = 2**32 - 1


class InputError(ValueError):
    """A request the app refuses; the message is written for the person at the page."""


@dataclass
class Result:
    """Images of one request (each (H, W, 3) uint8) and what they cost."""

    images: list[np.ndarray]
    seconds: float
    nfe: int  # model evaluations per image (CFG counts two)
    label: str

    def summary(self) -> str:
        n = len(self.images)
        per_image = 1000 * self.seconds / n
        return (
            f"{self.label}: {self.nfe} model evaluations per image; {n} image{'s' * (n > 1)} in "
            f"{self.seconds:.2f} s, **{per_image:.0f} ms per image**"
        )


@dataclass
class Models:
    """Everything the app samples with, loaded once.

    ``sizes``: choice label -> (height, width) in pixels, the default first; one entry for a single-scale PixArt, the
    resolution-binning buckets at the config's resolution for a PixArtMS, α or Σ (diffusers' tables: 33 buckets, the
    40 of ASPECT_RATIO_2048 at 2048; those the latent patch grid divides).
    ``lcm_cfg_scale``: the guidance a w-embedding student is sampled at (its config's ``method.w`` + 1, diffusers'
    convention); None for a student whose guidance was fixed in distillation.
    """

    teacher: Pipeline | None
    lcm: Pipeline | None
    sizes: dict[str, tuple[int, int]]
    name: str = ""
    control: object | None = None  # diffusion.app.control.Control: the ControlNet tab's pipelines
    paths: dict[str, str] | None = None  # "teacher" / "lcm" -> the weights file each was loaded from
    lcm_cfg_scale: float | None = None

    @property
    def multiscale(self) -> bool:
        return len(self.sizes) > 1

    def pipeline(self, sampler: str) -> Pipeline:
        pipe = self.lcm if sampler == "lcm" else self.teacher
        if pipe is None:
            flag = "lcm" if sampler == "lcm" else "teacher"
            raise InputError(f"No {SAMPLER_LABELS[sampler]} is loaded: start the app with --checkpoint {flag}=PATH.")
        return pipe

    def summary(self) -> str:
        have = [k for k, p in (("teacher", self.teacher), ("LCM student", self.lcm)) if p is not None]
        sizes = f"{len(self.sizes)} aspect-ratio buckets" if self.multiscale else next(iter(self.sizes))
        return f"{self.name}: {' and '.join(have)}, {sizes}"


def size_choices(pipe: Pipeline, resolution: int) -> dict[str, tuple[int, int]]:
    """See :attr:`Models.sizes`; square ``resolution`` first."""
    if not isinstance(base_network(pipe.model), PixArtMS):  # a ControlNet: its base decides
        return {f"{pipe.resolution[0]}×{pipe.resolution[1]}": pipe.resolution}
    table = binning_table(resolution, pipe.codec.downsample * pipe.model.patch_size)
    ordered = sorted(table.items(), key=lambda item: (item[0] != "1.0", float(item[0])))
    return {f"{h}×{w} (h/w {key})": (h, w) for key, (h, w) in ordered}


def _require(path: str | Path, what: str) -> str:
    if not Path(path).exists():
        raise SystemExit(f"{what} not found: {path}")
    return str(path)


def load_models(
    config: str | None,
    checkpoints: Mapping[str, str],
    text_encoder: str | None = None,
    vae: str | None = None,
    device: str = "cpu",
    dtype: str = "fp32",
) -> Models:
    """Build the app's pipelines once. ``config`` None: the embedded default (its tiny T5 is made if missing and the
    committed student ``assets/tiny_lcm`` is the default LCM checkpoint). Missing files: SystemExit naming them."""
    cfg = Config.fromfile(_require(config or DEFAULT_CONFIG, "config"))
    checkpoints = dict(checkpoints)
    if text_encoder:
        cfg.merge_from_dict({"text_encoder.path": text_encoder})
    if vae:
        scale = cfg.codec.get("scale_factor", 0.18215) if cfg.codec.get("type") == "AutoencoderKLCodec" else 0.18215
        cfg.codec = dict(type="AutoencoderKLCodec", path=_require(vae, "--vae"), scale_factor=scale)
    if config is None:
        ensure_tiny_text_encoder(cfg.text_encoder.path)  # deterministic and fast; data are not needed
        if "lcm" not in checkpoints and not DEFAULT_LCM.is_file():
            missing = shown(DEFAULT_LCM)
            raise SystemExit(f"the embedded default's LCM student {missing} is missing: run make lcm-student")
        checkpoints.setdefault("lcm", DEFAULT_LCM)
    _require(cfg.text_encoder.path, "text encoder (text_encoder.path / --text-encoder)")
    for kind, path in checkpoints.items():
        _require(path, f"--checkpoint {kind}")
    teacher_path, named = checkpoints.get("teacher"), weight_sources(cfg).teacher
    if teacher_path is None and isinstance(named, (str, Path)):
        try:  # a config's path: from the current folder, else the checkout (diffusion.paths.config_path)
            teacher_path = str(config_path(named, "weights.teacher"))
        except FileNotFoundError as err:
            if "lcm" not in checkpoints:
                raise SystemExit(f"teacher (weights.teacher; or --checkpoint teacher=PATH): {err}") from None
            print(f"[app] no teacher: {err}; serving the LCM student only")
    if teacher_path is None and "lcm" not in checkpoints:
        raise SystemExit("nothing to serve: give --checkpoint teacher=PATH and/or lcm=PATH")
    kw = dict(device=device, dtype=DTYPES[dtype])
    teacher = load_pipeline(teacher_config(cfg), teacher_path, **kw) if teacher_path else None
    lcm = load_pipeline(cfg, checkpoints["lcm"], like=teacher, **kw) if "lcm" in checkpoints else None
    lcm_cfg_scale = method_sampler(cfg).get("cfg_scale") if lcm is not None and _embeds_w(lcm) else None
    pipe = teacher or lcm
    paths = {"teacher": teacher_path, "lcm": checkpoints.get("lcm")}
    paths = {k: str(resolve_checkpoint(v)) for k, v in paths.items() if v}
    sizes = size_choices(pipe, cfg.data.resolution)
    name = Path(config or DEFAULT_CONFIG).stem
    return Models(teacher, lcm, sizes, name=name, paths=paths, lcm_cfg_scale=lcm_cfg_scale)


def _embeds_w(pipe: Pipeline) -> bool:
    return embeds_guidance(pipe.model)


def check_prompt(prompt: str | None) -> str:
    prompt = (prompt or "").strip()
    if not prompt:
        raise InputError("Enter a prompt.")
    return prompt


def check_int(name: str, value, low: int, high: int) -> int:
    """``value`` (gradio sliders send floats) as an int in [low, high], else InputError naming ``name``."""
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise InputError(f"{name} must be a whole number, got {value!r}.") from None
    if not number.is_integer() or not low <= number <= high:
        raise InputError(f"{name} must be a whole number from {low} to {high}, got {value}.")
    return int(number)


def check_sampler(sampler: str, steps, cfg_scale) -> tuple[int, float | None]:
    """(steps, cfg_scale) for ``sampler``; the LCM student takes no guidance (PixArt-delta §3)."""
    if sampler not in STEP_LIMITS:
        raise InputError(f"Unknown sampler {sampler!r}; choose one of {sorted(STEP_LIMITS)}.")
    steps = check_int(f"Steps for the {SAMPLER_LABELS[sampler]}", steps, *STEP_LIMITS[sampler])
    if sampler == "lcm":
        return steps, None
    try:
        cfg_scale = float(cfg_scale)
    except (TypeError, ValueError):
        raise InputError(f"Guidance scale must be a number, got {cfg_scale!r}.") from None
    if not CFG_LIMITS[0] <= cfg_scale <= CFG_LIMITS[1]:  # also refuses NaN
        raise InputError(f"Guidance scale must be from {CFG_LIMITS[0]} to {CFG_LIMITS[1]}, got {cfg_scale}.")
    return steps, cfg_scale


def run(pipe: Pipeline, prompts: list[str], seed: int, size: tuple[int, int], label: str, **sampler) -> Result:
    """One timed pipeline call (text encoding, sampling and decoding)."""
    start = time.perf_counter()
    images = pipe(prompts, seed=seed, height=size[0], width=size[1], **sampler)  # (B, 3, H, W) uint8
    if pipe.device.type == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    return Result(list(images.permute(0, 2, 3, 1).numpy()), seconds, pipe.nfe, label)


def sampler_label(sampler: str, steps: int, cfg_scale: float | None) -> str:
    guidance = f", CFG {cfg_scale:g}" if cfg_scale not in (None, 1.0) else ""
    if sampler == "lcm" and cfg_scale is not None:  # a w-embedding student: its embedded guidance
        guidance = f", w {cfg_scale - 1:g} embedded"
    return f"{SAMPLER_LABELS[sampler]}, {steps} step{'s' * (steps > 1)}{guidance}"


def text_to_image(
    models: Models, prompt: str, sampler: str, steps, cfg_scale, seed, batch, size: str | None = None
) -> Result:
    """``batch`` images of ``prompt`` from one seed (one noise batch, as ``tools/sample.py``)."""
    prompt = check_prompt(prompt)
    steps, cfg_scale = check_sampler(sampler, steps, cfg_scale)
    cfg_scale = models.lcm_cfg_scale if sampler == "lcm" else cfg_scale
    seed = check_int("Seed", seed, 0, MAX_SEED)
    batch = check_int("Batch size", batch, 1, MAX_BATCH)
    size = size or next(iter(models.sizes))
    if size not in models.sizes:
        raise InputError(f"Unknown size {size!r}; choose one of {list(models.sizes)}.")
    pipe = models.pipeline(sampler)
    label = sampler_label(sampler, steps, cfg_scale)
    return run(pipe, [prompt] * batch, seed, models.sizes[size], label, name=sampler, steps=steps, cfg_scale=cfg_scale)


def teacher_vs_lcm(models: Models, prompt: str, seed, teacher_steps, cfg_scale) -> tuple[Result, Result]:
    """The same prompt and seed through the teacher (DPM-Solver++, ``teacher_steps``, CFG) and the LCM student at
    its default 4 steps; the default size."""
    prompt = check_prompt(prompt)
    steps, cfg_scale = check_sampler("dpm", teacher_steps, cfg_scale)
    seed = check_int("Seed", seed, 0, MAX_SEED)
    teacher, lcm = models.pipeline("dpm"), models.pipeline("lcm")
    size = next(iter(models.sizes.values()))
    label = sampler_label("dpm", steps, cfg_scale)
    slow = run(teacher, [prompt], seed, size, label, name="dpm", steps=steps, cfg_scale=cfg_scale)
    lcm_steps, w = SAMPLER_DEFAULTS["lcm"]["steps"], models.lcm_cfg_scale
    fast = run(lcm, [prompt], seed, size, sampler_label("lcm", lcm_steps, w), name="lcm", steps=lcm_steps, cfg_scale=w)
    return slow, fast
