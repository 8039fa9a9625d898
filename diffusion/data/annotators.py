"""Control-map annotators for the ControlNet (PixArt-delta §4): image -> control map, both (B, C, H, W) in [0, 1].

- ``HEDAnnotator(path)``: the Apache-2.0 HED edge network of ControlNet (``ControlNetHED_Apache2``, RGB input) that
  PixArt-delta's released ControlNets were trained on; loads the released ``ControlNetHED.pth`` strictly with its
  official parameter names (fp16 files accepted).
- ``CannyAnnotator``: OpenCV Canny edges, no weights (the default wherever no HED file is given; the official code
  supports HED only).
- ``ImageAnnotator``: the map as it is (a user-supplied edge, depth or scribble map).

``build_annotator(name, hed_path)`` is the one place tools pick one by name.
"""

from __future__ import annotations

from pathlib import Path
from typing import BinaryIO

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from diffusion.data.images import load_image, pixels_to_model

ANNOTATORS = ("hed", "canny", "image")
HED_HINT = "output/pretrained_models/ControlNetHED.pth"
# (in, out, convs) of the five VGG-style stages; stages 2-5 start with a 2x2 max-pool.
HED_STAGES = ((3, 64, 2), (64, 128, 2), (128, 256, 3), (256, 512, 3), (512, 512, 3))


class DoubleConvBlock(nn.Module):
    """``convs`` 3x3 conv + ReLU layers and a 1x1 ``projection`` to one side-output channel (official names)."""

    def __init__(self, in_channels: int, out_channels: int, num_convs: int):
        super().__init__()
        self.convs = nn.Sequential(
            *(nn.Conv2d(in_channels if i == 0 else out_channels, out_channels, 3, padding=1) for i in range(num_convs))
        )
        self.projection = nn.Conv2d(out_channels, 1, 1)

    def forward(self, x: torch.Tensor, downsample: bool) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, C_in, H, W) -> features (B, C_out, H', W') and side output (B, 1, H', W'), H' = H/2 if downsample."""
        if downsample:
            x = F.max_pool2d(x, kernel_size=2, stride=2)
        for conv in self.convs:
            x = F.relu(conv(x))
        return x, self.projection(x)


class ControlNetHED(nn.Module):
    """The HED network (official parameter names ``norm``, ``block{1..5}.convs.{i}``, ``block{k}.projection``).

    forward(x (B, 3, H, W) RGB in 0..255) -> five side outputs (B, 1, H/2^k, W/2^k), k = 0..4, as logits.
    """

    def __init__(self):
        super().__init__()
        self.norm = nn.Parameter(torch.zeros(1, 3, 1, 1))  # learned mean pixel, subtracted from the 0..255 input
        for k, (cin, cout, n) in enumerate(HED_STAGES, start=1):
            setattr(self, f"block{k}", DoubleConvBlock(cin, cout, n))

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        h, sides = x - self.norm, []
        for k in range(1, len(HED_STAGES) + 1):
            h, side = getattr(self, f"block{k}")(h, downsample=k > 1)
            sides.append(side)
        return sides


class HEDAnnotator(nn.Module):
    """HED soft edges: RGB (B, 3, H, W) in [0, 1] -> (B, 1, H, W) in [0, 1].

    Official post-processing: input x 255 minus the learned ``norm``; each of the five side outputs resized to H x W
    (bilinear, ``align_corners=False``, i.e. OpenCV's INTER_LINEAR), their mean, a sigmoid, clipped to [0, 1].
    """

    def __init__(self, path: str | Path):
        super().__init__()
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(
                f"HED weights not found at {path}: put the released ControlNetHED.pth (lllyasviel/Annotators or "
                f"PixArt-alpha/PixArt-alpha on the Hugging Face hub) there, e.g. at {HED_HINT}, or use canny"
            )
        try:
            state = torch.load(str(path), map_location="cpu", weights_only=True)
        except Exception as err:  # a corrupt or non-weights file: name it
            raise ValueError(f"cannot read HED weights {path}: {err}") from err
        if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
            state = state["state_dict"]
        self.path = path  # recorded by feature caches (diffusion/data/provenance.py)
        self.net = ControlNetHED()
        try:  # fp16 files load into the fp32 network (load_state_dict copies with a cast)
            self.net.load_state_dict({k: v.float() for k, v in state.items()}, strict=True)
        except RuntimeError as err:
            raise KeyError(f"{path} is not a ControlNetHED state dict: {err}") from err
        self.net.eval().requires_grad_(False)

    @torch.no_grad()
    def forward(self, images: torch.Tensor) -> torch.Tensor:
        if images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(f"HED expects RGB images (B, 3, H, W) in [0, 1], got {tuple(images.shape)}")
        weight = self.net.norm
        height, width = images.shape[-2:]
        sides = self.net(images.to(weight.device, weight.dtype) * 255.0)
        sides = [F.interpolate(s, size=(height, width), mode="bilinear", align_corners=False) for s in sides]
        return torch.sigmoid(torch.stack(sides).mean(0)).clamp(0, 1).float()


class CannyAnnotator(nn.Module):
    """OpenCV Canny edges: RGB (B, 3, H, W) in [0, 1] -> (B, 1, H, W) in {0, 1}; thresholds on the 0..255 grey image
    (ControlNet's defaults 100 / 200); ``l2_gradient``: OpenCV's exact gradient magnitude instead of the L1 one."""

    def __init__(self, low: int = 100, high: int = 200, l2_gradient: bool = False):
        super().__init__()
        if not 0 <= low <= high:
            raise ValueError(f"Canny needs 0 <= low <= high, got {low}, {high}")
        self.low, self.high, self.l2_gradient = low, high, l2_gradient

    @torch.no_grad()
    def forward(self, images: torch.Tensor) -> torch.Tensor:
        import cv2

        if images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(f"Canny expects RGB images (B, 3, H, W) in [0, 1], got {tuple(images.shape)}")
        rgb = (images.clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()
        edges = [
            cv2.Canny(
                cv2.cvtColor(np.ascontiguousarray(im), cv2.COLOR_RGB2GRAY),
                self.low,
                self.high,
                L2gradient=self.l2_gradient,
            )
            for im in rgb
        ]
        return torch.from_numpy(np.stack(edges))[:, None].to(images.device).float() / 255.0


class ImageAnnotator(nn.Module):
    """The control image is already the map: (B, 3, H, W) in [0, 1] -> its grey value (B, 1, H, W)."""

    @torch.no_grad()
    def forward(self, images: torch.Tensor) -> torch.Tensor:
        if images.ndim != 4 or images.shape[1] not in (1, 3):
            raise ValueError(f"expected images (B, 1 or 3, H, W) in [0, 1], got {tuple(images.shape)}")
        return images.float().mean(1, keepdim=True).clamp(0, 1)


def build_annotator(
    name: str,
    hed_path: str | Path | None = None,
    canny_low: int = 100,
    canny_high: int = 200,
    l2_gradient: bool = False,
) -> nn.Module:
    """``'hed'`` (weights from ``hed_path``, default ``HED_HINT``), ``'canny'`` (with these thresholds) or
    ``'image'``."""
    if name == "hed":
        return HEDAnnotator(hed_path or HED_HINT)
    if name == "canny":
        return CannyAnnotator(canny_low, canny_high, l2_gradient)
    if name == "image":
        return ImageAnnotator()
    raise ValueError(f"unknown annotator {name!r}; expected one of {ANNOTATORS}")


def to_control_image(control_map: torch.Tensor) -> torch.Tensor:
    """(B, 1, H, W) map in [0, 1] -> (B, 3, H, W) uint8, the RGB control image the codec encodes (as the official
    feature extraction: the map repeated to three channels)."""
    return (control_map.clamp(0, 1) * 255).round().to(torch.uint8).expand(-1, 3, -1, -1).contiguous()


def control_pixels(annotator: nn.Module, images: torch.Tensor) -> torch.Tensor:
    """Images (B, 3, H, W) in [-1, 1] -> ``annotator``'s control images (B, 3, H, W) in [-1, 1], what the codec
    encodes: the map made 8-bit RGB by :func:`to_control_image` (as the official extraction stores it). Feature
    extraction and on-the-fly encoding both make their control images here."""
    control = to_control_image(annotator((images + 1) / 2))
    return pixels_to_model(control.to(images.device))


def read_control_image(
    path: str | Path | BinaryIO,
    height: int,
    width: int,
    annotator: str = "image",
    hed_path: str | Path | None = None,
) -> torch.Tensor:
    """A control image -> (1, 3, height, width) uint8 control map for ``Pipeline(control=...)``, with training's
    geometry: read as displayed (EXIF orientation, alpha, 16-bit: :func:`diffusion.data.images.open_rgb`), resized to
    cover the sampling size keeping its aspect ratio and centre-cropped (:func:`diffusion.data.images.load_image`,
    the very function feature extraction uses), then run through ``annotator`` ('image' keeps it as it is; 'canny';
    'hed' with ``hed_path``). ``path``: a file, or an open binary file object (the app's uploads). A missing file is
    ``FileNotFoundError``, an unreadable one (truncated, not an image) ``OSError``, both naming it."""
    if isinstance(path, (str, Path)):
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"control image not found: {path}")
    if annotator not in ANNOTATORS:
        raise ValueError(f"unknown annotator {annotator!r}; expected one of {ANNOTATORS}")
    try:
        image = load_image(path, (height, width))  # (3, h, w) in [-1, 1]
    except OSError as err:
        raise OSError(f"cannot read control image {path}: {err}") from err
    control = ((image + 1) * 127.5).round().to(torch.uint8)[None]  # exactly the decoded 0..255 values
    if annotator == "image":
        return control
    return to_control_image(build_annotator(annotator, hed_path)(control.float() / 255.0))
