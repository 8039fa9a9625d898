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


def tiny_checkpoint(tmp_path: Path) -> tuple[Path, Path]:
    """A one-block random PixArt (32 wide) on the tiny teacher's config with a fresh tiny T5 under ``tmp_path``:
    ``(config.py, model.safetensors)`` for ``load_pipeline`` and the tools."""
    from safetensors.torch import save_file

    from diffusion.data import EMBEDDED_MAX_LENGTH
    from diffusion.data.text_encoder import ensure_tiny_text_encoder
    from diffusion.registry import MODELS

    repo = Path(__file__).resolve().parents[2]
    text_encoder = ensure_tiny_text_encoder(tmp_path / "te")
    config = tmp_path / "tiny.py"
    config.write_text(
        f"_base_ = [{str(repo / 'configs/pixart/tiny_teacher.py')!r}]\n"
        "model = dict(hidden_size=32, depth=1, num_heads=2)\n"
        f"text_encoder = dict(path={str(text_encoder)!r})\n"
    )
    model = MODELS.build(
        dict(
            type="PixArt_tiny",
            input_size=16,
            patch_size=2,
            in_channels=12,
            hidden_size=32,
            depth=1,
            num_heads=2,
            caption_channels=64,
            model_max_length=EMBEDDED_MAX_LENGTH,
            pe_interpolation=1.0,
        )
    )
    save_file(model.state_dict(), str(tmp_path / "model.safetensors"))
    return config, tmp_path / "model.safetensors"
