"""The standard FID network (PixArt-α/δ §5 report FID-30K on MS-COCO with it): InceptionV3 with the TF-ported weights
``pt_inception-2015-12-05-6726825d.pth`` that pytorch-fid distributes and clean-fid, torchmetrics and torch-fidelity
use, pool3 2048-d features, pytorch-fid's input conventions.

It is torchvision's ``Inception3`` (1008-way fc, no aux classifier) with the FID variants of four block types; only
the pooling of one branch differs (``count_include_pad=False`` average pools in Mixed_5b-d, 6b-e, 7b; a max pool in
Mixed_7c). The parameter names are torchvision's, so the weights file loads strictly.

:class:`TorchvisionInceptionFeatures` is torchvision's ImageNet InceptionV3 (e.g. ``inception_v3_google-0cc3c7bd.pth``)
with the same input handling. Its Fréchet distance is **not the standard FID** and must not be compared with
published numbers; its extractor name ``inception-torchvision`` keeps its statistics apart.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import load_file
from torch import nn
from torchvision.models.inception import Inception3, InceptionA, InceptionC, InceptionE

FID_WEIGHTS_NAME = "pt_inception-2015-12-05-6726825d.pth"
FID_WEIGHTS_URL = f"https://github.com/mseitzer/pytorch-fid/releases/download/fid_weights/{FID_WEIGHTS_NAME}"
INCEPTION_SIZE = 299
INCEPTION_DIM = 2048
FID_CLASSES = 1008  # the TF graph's classifier: 1000 ImageNet classes + 8 unused
# torchvision's forward minus the aux head, dropout and fc: the stem, the Mixed blocks and the final average pool.
POOL3_LAYERS = (
    "Conv2d_1a_3x3", "Conv2d_2a_3x3", "Conv2d_2b_3x3", "maxpool1", "Conv2d_3b_1x1", "Conv2d_4a_3x3", "maxpool2",
    "Mixed_5b", "Mixed_5c", "Mixed_5d", "Mixed_6a", "Mixed_6b", "Mixed_6c", "Mixed_6d", "Mixed_6e", "Mixed_7a",
    "Mixed_7b", "Mixed_7c", "avgpool",
)  # fmt: skip


def _avg_pool(x: torch.Tensor) -> torch.Tensor:
    # TF's 'SAME' average pool divides by the number of real pixels under the window, not by 9.
    return F.avg_pool2d(x, kernel_size=3, stride=1, padding=1, count_include_pad=False)


class FIDInceptionA(InceptionA):
    """Mixed_5b/5c/5d: torchvision's InceptionA with TF's average pool in the pool branch."""

    def _forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        b5 = self.branch5x5_2(self.branch5x5_1(x))
        b3 = self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x)))
        return [self.branch1x1(x), b5, b3, self.branch_pool(_avg_pool(x))]


class FIDInceptionC(InceptionC):
    """Mixed_6b-6e: torchvision's InceptionC with TF's average pool in the pool branch."""

    def _forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        b7 = self.branch7x7_3(self.branch7x7_2(self.branch7x7_1(x)))
        d = x
        for conv in (self.branch7x7dbl_1, self.branch7x7dbl_2, self.branch7x7dbl_3, self.branch7x7dbl_4):
            d = conv(d)
        return [self.branch1x1(x), b7, self.branch7x7dbl_5(d), self.branch_pool(_avg_pool(x))]


class FIDInceptionE(InceptionE):
    """Mixed_7b (``max_pool=False``: TF's average pool) and Mixed_7c (``max_pool=True``: a 3×3 stride-1 max pool,
    as in the TF graph) in the pool branch of torchvision's InceptionE."""

    def __init__(self, in_channels: int, max_pool: bool) -> None:
        super().__init__(in_channels)
        self.max_pool = max_pool

    def _forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        b3 = self.branch3x3_1(x)
        b3 = torch.cat([self.branch3x3_2a(b3), self.branch3x3_2b(b3)], 1)
        d = self.branch3x3dbl_2(self.branch3x3dbl_1(x))
        d = torch.cat([self.branch3x3dbl_3a(d), self.branch3x3dbl_3b(d)], 1)
        pooled = F.max_pool2d(x, kernel_size=3, stride=1, padding=1) if self.max_pool else _avg_pool(x)
        return [self.branch1x1(x), b3, d, self.branch_pool(pooled)]


def fid_inception_v3() -> Inception3:
    """The FID InceptionV3 architecture with uninitialised weights (load ``pt_inception-2015-12-05-6726825d.pth``)."""
    net = Inception3(num_classes=FID_CLASSES, aux_logits=False, transform_input=False, init_weights=False)
    net.Mixed_5b = FIDInceptionA(192, pool_features=32)
    net.Mixed_5c = FIDInceptionA(256, pool_features=64)
    net.Mixed_5d = FIDInceptionA(288, pool_features=64)
    for name, c7 in (("Mixed_6b", 128), ("Mixed_6c", 160), ("Mixed_6d", 160), ("Mixed_6e", 192)):
        setattr(net, name, FIDInceptionC(768, channels_7x7=c7))
    net.Mixed_7b = FIDInceptionE(1280, max_pool=False)
    net.Mixed_7c = FIDInceptionE(2048, max_pool=True)
    return net


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """A flat state dict from ``.safetensors`` or a ``.pth`` read with ``weights_only=True`` (a ``state_dict`` key
    is unwrapped). Undecodable files are a ValueError naming the file."""
    path = Path(path)
    try:
        if path.suffix == ".safetensors":
            return load_file(str(path))
        state = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as error:  # torch/safetensors raise many types for a corrupt file; name the file once
        raise ValueError(f"cannot read weights file {path}: {error}") from error
    state = state.get("state_dict", state) if isinstance(state, dict) else state
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ValueError(f"{path} is not a flat state dict of tensors")
    return state


def _load_strict(net: nn.Module, state: dict[str, torch.Tensor], path: Path, expected: str) -> None:
    """``load_state_dict`` (strict) whose error names the file, what it was expected to hold and what differs."""
    own = net.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    shapes = [
        f"{k}: {tuple(state[k].shape)} vs {tuple(v.shape)}"
        for k, v in own.items()
        if k in state and state[k].shape != v.shape
    ]
    if missing or unexpected or shapes:
        hint = ""
        if any(k.startswith("AuxLogits.") for k in unexpected):  # torchvision's checkpoint, offered as FID's
            hint = " It looks like torchvision's ImageNet InceptionV3: that is --features inception-torchvision."
        elif "fc.weight" in state and state["fc.weight"].shape[0] == FID_CLASSES:
            hint = f" It looks like the FID Inception ({FID_WEIGHTS_NAME}): that is --features inception."
        raise ValueError(
            f"{path} is not {expected}: {len(missing)} missing keys {missing[:4]}, {len(unexpected)} unexpected keys "
            f"{unexpected[:4]}, {len(shapes)} shape mismatches {shapes[:3]}.{hint}"
        )
    net.load_state_dict(state, strict=True)


class _Pool3Features(nn.Module):
    """Images → (N, 2048) pool3 features, pytorch-fid's conventions: uint8 (N,3,H,W) is divided by 255 (float input
    is taken as [0, 1]), resized bilinearly to 299 with ``align_corners=False`` at any input size, scaled to [-1, 1].
    ``image_size`` is None: folders are read at their own size and the network resizes."""

    dim, image_size = INCEPTION_DIM, None

    def __init__(self, net: Inception3) -> None:
        super().__init__()
        self.net = net.eval()

    @torch.no_grad()
    def forward(self, images: torch.Tensor) -> torch.Tensor:
        device = next(self.net.parameters()).device
        x = images.to(device)
        x = x.float() / 255 if x.dtype == torch.uint8 else x.float()
        x = F.interpolate(x, size=(INCEPTION_SIZE, INCEPTION_SIZE), mode="bilinear", align_corners=False)
        x = 2 * x - 1
        for name in POOL3_LAYERS:
            x = getattr(self.net, name)(x)
        return torch.flatten(x, 1)  # (N, 2048)


class FIDInceptionFeatures(_Pool3Features):
    """The standard FID feature network from a local ``pt_inception-2015-12-05-6726825d.pth``."""

    name = "inception"

    @classmethod
    def from_file(cls, path: str | Path | None) -> FIDInceptionFeatures:
        if path is None or not Path(path).is_file():
            raise FileNotFoundError(
                f"FID Inception weights not found: {path}. The standard FID network needs pytorch-fid's "
                f"{FID_WEIGHTS_NAME} as a local file (nothing is downloaded): fetch it on a machine with internet "
                f"from {FID_WEIGHTS_URL} (or copy it from ~/.cache/torch/hub/checkpoints/ after any pytorch-fid run) "
                "and pass --weights PATH"
            )
        net = fid_inception_v3()
        _load_strict(net, read_state_dict(path), Path(path), f"the FID Inception ({FID_WEIGHTS_NAME})")
        return cls(net)


class TorchvisionInceptionFeatures(_Pool3Features):
    """torchvision's ImageNet InceptionV3 from a local state dict (``aux_logits=True``). NOT the standard FID
    network: different weights and blocks, so its distances are not comparable with published FIDs."""

    name = "inception-torchvision"

    @classmethod
    def from_file(cls, path: str | Path | None) -> TorchvisionInceptionFeatures:
        if path is None or not Path(path).is_file():
            raise FileNotFoundError(
                f"torchvision InceptionV3 weights not found: {path}; pass --weights with a local torchvision "
                "inception_v3 state dict (e.g. inception_v3_google-0cc3c7bd.pth; nothing is downloaded). For the "
                f"standard FID use --features inception with {FID_WEIGHTS_NAME}"
            )
        net = Inception3(num_classes=1000, aux_logits=True, transform_input=False, init_weights=False)
        _load_strict(net, read_state_dict(path), Path(path), "torchvision's ImageNet inception_v3")
        return cls(net)
