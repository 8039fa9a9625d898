"""Shared by the eval and eval-tool tests: a narrow attribute net trained for a few seconds, and rendered folders."""

from pathlib import Path

import numpy as np
from PIL import Image

from diffusion.data.embedded import balanced_attributes, caption, render
from diffusion.eval.attribute_net import train_attribute_net

TINY_NET = dict(num=1024, steps=60, batch_size=32, lr=1e-2, num_heldout=128, widths=(8, 16, 16, 16))


def tiny_attribute_net(tmp_path_factory) -> Path:
    """The narrow net the tests use, trained once per test session (shared by every module); its weights path."""
    path = tmp_path_factory.getbasetemp() / "tiny_attribute_net" / "net.safetensors"
    if not path.is_file():
        train_attribute_net(path, **TINY_NET)
    return path


def render_folder(out: Path, num: int, seed: int = 0, max_offset: int = 1) -> list[str]:
    """``num`` clean renders ``out/00000.png, ...`` of balanced random attributes; returns their captions."""
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    prompts = []
    for i, attributes in enumerate(balanced_attributes(num, rng)):
        offset = tuple(int(v) for v in rng.integers(-max_offset, max_offset + 1, size=2))
        Image.fromarray(render(attributes, 32, offset)[0]).save(out / f"{i:05d}.png")
        prompts.append(caption(attributes))
    return prompts
