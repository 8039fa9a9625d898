"""FID feature networks (PixArt-δ §5, Fig. 2 report FID): ``embedded``, ``inception`` and ``inception-torchvision``.

- ``embedded``: the pooled features of the attribute net trained on the embedded shapes data
  (:mod:`diffusion.eval.attribute_net`). The default here, because InceptionV3 cannot be downloaded; its FID is an
  *embedded FID*, comparable only with itself.
- ``inception``: **the standard FID network** (:mod:`diffusion.eval.inception`), the TF-ported InceptionV3 from a local
  ``pt_inception-2015-12-05-6726825d.pth``, pool3 2048-d features with pytorch-fid's input conventions. Its numbers
  are comparable with pytorch-fid, torchmetrics and published FIDs (same images, same reference).
- ``inception-torchvision``: torchvision's ImageNet InceptionV3 from a local file. Not the standard FID; kept for
  users who only have those weights, under its own name so its statistics never mix with ``inception``'s.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from diffusion.eval.attribute_net import DEFAULT_PATH, AttributeNet, ensure_attribute_net
from diffusion.eval.inception import FIDInceptionFeatures, TorchvisionInceptionFeatures


class EmbeddedFeatures(nn.Module):
    """uint8 (N,3,H,W) → (N, net.dim) attribute-net features."""

    name = "embedded"

    def __init__(self, net: AttributeNet) -> None:
        super().__init__()
        self.net = net.eval()
        self.dim, self.image_size = net.dim, net.image_size

    @torch.no_grad()
    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.net.features(images)


def build_feature_extractor(
    name: str = "embedded", path: str | Path | None = None, device: str | torch.device = "cpu"
) -> nn.Module:
    """The feature network ``name`` (see :data:`FEATURE_EXTRACTORS`) on ``device``, in eval mode.

    Args:
        name: ``embedded``, ``inception`` (standard FID) or ``inception-torchvision``.
        path: ``embedded``: attribute-net weights (default ``output/eval/attribute_net.safetensors``, trained
            deterministically if missing); ``inception``: the local ``pt_inception-2015-12-05-6726825d.pth``
            (required); ``inception-torchvision``: a local torchvision ``inception_v3`` state dict (required).

    Returns:
        a module mapping uint8 (N,3,H,W) → float (N, D), with attributes ``name``, ``dim`` and ``image_size`` (the
        side folders are resized to when read, or None: read at their own size, the network resizes).
    """
    if name not in FEATURE_EXTRACTORS:
        raise KeyError(f"unknown feature extractor {name!r}; expected one of {sorted(FEATURE_EXTRACTORS)}")
    return FEATURE_EXTRACTORS[name](path).to(device).eval()


def _embedded(path: str | Path | None) -> EmbeddedFeatures:
    return EmbeddedFeatures(ensure_attribute_net(path or DEFAULT_PATH))


FEATURE_EXTRACTORS = {
    "embedded": _embedded,
    "inception": FIDInceptionFeatures.from_file,
    "inception-torchvision": TorchvisionInceptionFeatures.from_file,
}
