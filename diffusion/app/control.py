"""The app's ControlNet tab without the page (PixArt-delta §4): an uploaded image or a drawn sketch -> an annotator
(Canny by default, HED when its weights file is given, or the image used as the control map as it is) -> the control
map -> an image from the ControlNet-Transformer on the teacher, or the same ControlNet on the 4-step LCM student.

The ControlNet is built by ``diffusion.build.controlnet_on`` once per base, around a copy of the very network the app
serves beside it: on the teacher, and (the paper's ControlNet + LCM route: the teacher's ControlNet applied as is) on
the student, whichever kind it is (full, LCM-LoRA merged into its base, w-embedding), so the controlled images come
from exactly the app's teacher / student, sampled under its diffusion process.
An upload reaches :func:`check_image` as the uploaded file's path and is decoded here (:func:`read_upload`), so that a
file that is not an image, is truncated or corrupt, or is over Pillow's pixel limit gets the app's own message.
"""

from __future__ import annotations

import io
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import numpy as np
import torch
from mmengine.config import Config
from PIL import Image

from diffusion.app.core import (
    MAX_SEED,
    InputError,
    Models,
    Result,
    check_int,
    check_prompt,
    check_sampler,
    run,
    sampler_label,
)
from diffusion.build import DTYPES, controlnet_on, load_pipeline
from diffusion.data.annotators import CannyAnnotator, read_control_image
from diffusion.data.buckets import closest_bucket
from diffusion.data.images import open_rgb
from diffusion.paths import repo_path
from diffusion.pipeline import Pipeline

# the embedded default's committed ControlNet (make controlnet), served when the app runs on the embedded default
DEFAULT_CONTROLNET = repo_path("assets/tiny_controlnet/model.safetensors")
DEFAULT_CONTROLNET_CONFIG = repo_path("configs/controlnet/tiny_controlnet.py")
ANNOTATORS = {"canny": "Canny edges", "hed": "HED edges", "image": "Use as is (already a control map)"}
CANNY_LIMITS = (1, 500)
MIN_SIDE = 8


@dataclass
class Control:
    """ControlNet pipelines (None where that base is not loaded) and the HED annotator (None without its file)."""

    teacher: Pipeline | None
    lcm: Pipeline | None
    hed: object | None = None

    def pipeline(self, sampler: str) -> Pipeline:
        pipe = self.lcm if sampler == "lcm" else self.teacher
        if pipe is None:
            raise InputError(f"No ControlNet on the {'LCM student' if sampler == 'lcm' else 'teacher'} is loaded.")
        return pipe

    @property
    def annotators(self) -> list[str]:
        return [name for name in ANNOTATORS if name != "hed" or self.hed is not None]


def load_controlnets(
    models: Models, config: str, checkpoint: str, hed: str | None = None, device: str = "cpu", dtype: str = "fp32"
) -> Control:
    """The ControlNet of ``config`` (a config with a ``controlnet`` section) from ``checkpoint`` on each of the app's
    bases. Missing files: SystemExit naming them."""
    for path, what in ((config, "--controlnet-config"), (checkpoint, "--controlnet"), (hed, "--hed")):
        if path is not None and not Path(path).exists():
            raise SystemExit(f"{what} not found: {path}")
    cfg = Config.fromfile(str(config))
    if cfg.get("controlnet") is None:
        raise SystemExit(f"--controlnet-config {config} has no controlnet section")
    pipes = {}
    for kind, base in (("teacher", models.teacher), ("lcm", models.lcm)):
        if base is None:
            continue
        try:  # the copies of the file on this base network (a full official file's own base is not used)
            model = controlnet_on(cfg, base.model, checkpoint, device, DTYPES[dtype])
        except ValueError as err:  # a file of another kind (a plain PixArt, LoRA adapters, another architecture)
            raise SystemExit(f"--controlnet {checkpoint}: {err}") from None
        if model.ignores_control:
            raise SystemExit(
                f"--controlnet {checkpoint} holds no trained ControlNet weights (its zero projections are all zero, "
                "so the ControlNet tab would ignore every control): pass a trained ControlNet checkpoint"
            )
        pipes[kind] = load_pipeline(cfg, model=model, like=base, process=base.process)
    annotator = None
    if hed is not None:
        try:
            from diffusion.data.annotators import HEDAnnotator
        except ImportError:
            raise SystemExit("--hed: this checkout has no HED annotator (diffusion/data/annotators.py)") from None
        annotator = HEDAnnotator(hed).to(device)
    return Control(pipes.get("teacher"), pipes.get("lcm"), annotator)


def canny(image: np.ndarray, low: int, high: int) -> np.ndarray:
    """(H, W, 3) uint8 RGB -> (H, W) uint8 Canny edges (255 on an edge): the annotators' Canny, with L2 gradients."""
    rgb = torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1)[None].float() / 255
    return (CannyAnnotator(low, high, l2_gradient=True)(rgb)[0, 0] * 255).round().to(torch.uint8).numpy()


def read_upload(source: str | Path | BinaryIO) -> np.ndarray:
    """An uploaded file as the (H, W, 3) uint8 picture an image viewer shows (:func:`diffusion.data.images.open_rgb`:
    EXIF orientation, transparency over white, 16-bit scaled), as ``tools/sample.py --control`` reads one.

    Refused with :class:`InputError` saying why: not an image Pillow can read, truncated or corrupt, or more pixels
    than ``PIL.Image.MAX_IMAGE_PIXELS`` (Pillow's decompression-bomb guard, which only warns up to twice that)."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            return np.asarray(open_rgb(source))
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise InputError(
            f"The image is too large: more than {Image.MAX_IMAGE_PIXELS:,} pixels, the most this app decodes "
            "(Pillow's limit against decompression bombs). Upload a smaller image."
        ) from None
    except Image.UnidentifiedImageError:
        raise InputError(
            "The uploaded file is not an image this app can read (PNG, JPEG, WebP, BMP, GIF, TIFF...)."
        ) from None
    except Exception as err:  # noqa: BLE001 - whatever a damaged file makes the decoder raise
        raise InputError(f"The uploaded image cannot be decoded (truncated or corrupt?): {err}.") from None


def check_image(image) -> np.ndarray:
    """An uploaded file (its path or a binary file object: :func:`read_upload`) or a drawn / given array as
    (H, W, 3) uint8 (an array's grey expanded, its alpha composited on black: a sketch layer)."""
    if image is None:
        raise InputError("Upload an image or draw a sketch first.")
    if isinstance(image, str | Path | io.IOBase):
        image = read_upload(image)
    image = np.asarray(image)
    if image.dtype != np.uint8 or image.ndim not in (2, 3) or (image.ndim == 3 and image.shape[2] not in (1, 3, 4)):
        raise InputError(f"Expected an RGB or grey 8-bit image, got an array {image.dtype} {image.shape}.")
    if min(image.shape[:2]) < MIN_SIDE:
        raise InputError(f"The image is {image.shape[1]}×{image.shape[0]}; it needs at least {MIN_SIDE} px a side.")
    if image.ndim == 2:
        image = image[..., None]
    if image.shape[2] == 4:  # a sketch layer: strokes over transparency, composited onto black
        alpha = image[..., 3:].astype(np.float32) / 255
        image = (image[..., :3].astype(np.float32) * alpha).round().astype(np.uint8)
    return np.repeat(image, 3, axis=2) if image.shape[2] == 1 else image


def check_canny(low, high) -> tuple[int, int]:
    """The Canny thresholds as ints in ``CANNY_LIMITS`` with low <= high, else InputError."""
    low = check_int("Canny low threshold", low, *CANNY_LIMITS)
    high = check_int("Canny high threshold", high, *CANNY_LIMITS)
    if low > high:
        raise InputError(f"The Canny low threshold ({low}) must not be above the high threshold ({high}).")
    return low, high


def control_map(image: np.ndarray, annotator: str, size: tuple[int, int], hed=None, low=100, high=200) -> np.ndarray:
    """(H, W, 3) uint8 image -> (h, w, 3) uint8 control map at ``size`` = (h, w): resized first, then annotated
    (the official app's order), white edges on black like the training edge maps. The resize is training's and
    ``tools/sample.py --control``'s (``diffusion.data.annotators.read_control_image``: cover ``size`` keeping the
    aspect ratio, centre crop), fed the array as a lossless PNG; Gradio has applied the upload's EXIF orientation
    already."""
    if annotator not in ANNOTATORS or (annotator == "hed" and hed is None):
        raise InputError(f"Unknown annotator {annotator!r}; choose one of {list(ANNOTATORS)} (HED needs --hed).")
    png = io.BytesIO()
    Image.fromarray(image).save(png, format="PNG")
    resized = read_control_image(png, *size)[0].permute(1, 2, 0).numpy()
    if annotator == "canny":
        edges = canny(resized, *check_canny(low, high))
    elif annotator == "hed":
        rgb = torch.from_numpy(resized).permute(2, 0, 1)[None].float() / 255
        with torch.no_grad():
            edges = (hed(rgb.to(next(hed.parameters()).device))[0, 0].cpu().numpy() * 255).round().astype(np.uint8)
    else:
        edges = resized
    edges = np.array(edges)
    out = np.repeat(edges[..., None], 3, axis=2) if edges.ndim == 2 else edges
    if not out.any():
        raise InputError("The control map is empty (all black): draw or upload something with edges.")
    return out


def controlled(
    models: Models, control: Control, prompt, image, annotator, sampler, steps, cfg_scale, seed, low=100, high=200
) -> tuple[np.ndarray, Result]:
    """The control map and the image generated under it, at the size bucket closest to the image's aspect."""
    prompt = check_prompt(prompt)
    steps, cfg_scale = check_sampler(sampler, steps, cfg_scale)
    cfg_scale = models.lcm_cfg_scale if sampler == "lcm" else cfg_scale
    seed = check_int("Seed", seed, 0, MAX_SEED)
    image = check_image(image)
    pipe = control.pipeline(sampler)
    _, size = closest_bucket(image.shape[0], image.shape[1], {str(h / w): (h, w) for h, w in models.sizes.values()})
    cmap = control_map(image, annotator, size, control.hed, low, high)
    cond = torch.from_numpy(cmap).permute(2, 0, 1)[None]  # (1, 3, h, w) uint8
    label = f"ControlNet ({ANNOTATORS[annotator]}), {sampler_label(sampler, steps, cfg_scale)}"
    result = run(pipe, [prompt], seed, size, label, name=sampler, steps=steps, cfg_scale=cfg_scale, control=cond)
    return cmap, result
