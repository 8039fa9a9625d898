"""Small files the data tests share: a random-weights HED file in the released ``ControlNetHED.pth`` layout."""

from pathlib import Path

import torch

OFFICIAL_HED = {"norm": (1, 3, 1, 1)}  # the released file's names and shapes
for k, (cin, cout, n) in enumerate([(3, 64, 2), (64, 128, 2), (128, 256, 3), (256, 512, 3), (512, 512, 3)], 1):
    for i in range(n):
        OFFICIAL_HED[f"block{k}.convs.{i}.weight"] = (cout, cin if i == 0 else cout, 3, 3)
        OFFICIAL_HED[f"block{k}.convs.{i}.bias"] = (cout,)
    OFFICIAL_HED[f"block{k}.projection.weight"] = (1, cout, 1, 1)
    OFFICIAL_HED[f"block{k}.projection.bias"] = (1,)


def write_random_hed(path: str | Path, seed: int = 0) -> dict[str, torch.Tensor]:
    """Save random fp16 weights (as released) with the official names to ``path``; returns the state dict."""
    g = torch.Generator().manual_seed(seed)
    state = {k: (torch.randn(s, generator=g) * 0.05).half() for k, s in OFFICIAL_HED.items()}
    state["norm"] = torch.tensor([123.0, 117.0, 104.0]).view(1, 3, 1, 1).half()
    torch.save(state, path)
    return state
