"""FID feature networks (PixArt-δ §5, Fig. 2 report FID): ``embedded`` and ``inception``.

- ``embedded``: the pooled features of the attribute net trained on the embedded shapes data
  (:mod:`diffusion.eval.attribute_net`). The default here, because InceptionV3 cannot be downloaded; its FID is an
  *embedded FID*, comparable only with itself.
- ``inception``: torchvision's InceptionV3 with weights from a local file (e.g. torchvision's
  ``inception_v3_google-0cc3c7bd.pth``), pool3 2048-d features of images resized to 299. Note that the standard FID
  (pytorch-fid, clean-fid) uses the TF-ported "FID Inception" weights and blocks, so numbers from torchvision weights
  are close to but not the same as published FIDs.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import load_file
from torch import nn

from diffusion.eval.attribute_net import DEFAULT_PATH, AttributeNet, ensure_attribute_net

INCEPTION_SIZE = 299
INCEPTION_DIM = 2048


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


class InceptionFeatures(nn.Module):
    """uint8 (N,3,H,W) → (N, 2048) InceptionV3 pool3 features (input resized bilinearly to 299, scaled to [-1, 1],
    which is what the TF-ported torchvision weights expect with ``transform_input=False``).

    Args:
        state_dict: weights for ``torchvision.models.inception_v3(aux_logits=True)`` (loaded strictly).
    """

    name = "inception"

    def __init__(self, state_dict: dict[str, torch.Tensor]) -> None:
        super().__init__()
        from torchvision.models import inception_v3

        self.net = inception_v3(weights=None, aux_logits=True, init_weights=False, transform_input=False)
        self.net.load_state_dict(state_dict)
        self.net.eval()
        self.dim, self.image_size = INCEPTION_DIM, INCEPTION_SIZE

    @torch.no_grad()
    def forward(self, images: torch.Tensor) -> torch.Tensor:
        device = next(self.net.parameters()).device
        x = images.to(device).float() / 255 if images.dtype == torch.uint8 else images.to(device).float()
        if x.shape[-2:] != (INCEPTION_SIZE, INCEPTION_SIZE):
            x = F.interpolate(x, size=(INCEPTION_SIZE, INCEPTION_SIZE), mode="bilinear", align_corners=False)
        x = 2 * x - 1
        net = self.net
        for name in (
            "Conv2d_1a_3x3", "Conv2d_2a_3x3", "Conv2d_2b_3x3", "maxpool1", "Conv2d_3b_1x1", "Conv2d_4a_3x3",
            "maxpool2", "Mixed_5b", "Mixed_5c", "Mixed_5d", "Mixed_6a", "Mixed_6b", "Mixed_6c", "Mixed_6d",
            "Mixed_6e", "Mixed_7a", "Mixed_7b", "Mixed_7c", "avgpool",
        ):  # fmt: skip
            x = getattr(net, name)(x)
        return torch.flatten(x, 1)  # (N, 2048)


def _load_state(path: Path) -> dict[str, torch.Tensor]:
    if path.suffix == ".safetensors":
        return load_file(str(path))
    state = torch.load(str(path), map_location="cpu", weights_only=True)
    return state.get("state_dict", state) if isinstance(state, dict) else state


def build_feature_extractor(
    name: str = "embedded", path: str | Path | None = None, device: str | torch.device = "cpu"
) -> nn.Module:
    """The feature network ``name`` (see :data:`FEATURE_EXTRACTORS`) on ``device``, in eval mode.

    Args:
        name: ``embedded`` or ``inception``.
        path: ``embedded``: attribute-net weights (default ``output/eval/attribute_net.safetensors``, trained
            deterministically if missing); ``inception``: a local ``.pth``/``.safetensors`` file (required).

    Returns:
        a module mapping uint8 (N,3,H,W) → float (N, D), with attributes ``name``, ``dim`` and ``image_size``.
    """
    if name not in FEATURE_EXTRACTORS:
        raise KeyError(f"unknown feature extractor {name!r}; expected one of {sorted(FEATURE_EXTRACTORS)}")
    return FEATURE_EXTRACTORS[name](path).to(device).eval()


def _embedded(path: str | Path | None) -> EmbeddedFeatures:
    return EmbeddedFeatures(ensure_attribute_net(path or DEFAULT_PATH))


def _inception(path: str | Path | None) -> InceptionFeatures:
    if path is None or not Path(path).is_file():
        raise FileNotFoundError(
            f"InceptionV3 weights file not found: {path}; pass --weights with a local torchvision "
            "inception_v3 state dict (nothing is downloaded)"
        )
    return InceptionFeatures(_load_state(Path(path)))


FEATURE_EXTRACTORS = {"embedded": _embedded, "inception": _inception}
