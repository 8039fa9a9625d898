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


def tiny_checkpoint(tmp_path: Path, depth: int = 1) -> tuple[Path, Path]:
    """A ``depth``-block random PixArt (32 wide) on the tiny teacher's config with a fresh tiny T5 under ``tmp_path``:
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
        f"model = dict(hidden_size=32, depth={depth}, num_heads=2)\n"
        f"text_encoder = dict(path={str(text_encoder)!r})\n"
    )
    model = MODELS.build(
        dict(
            type="PixArt_tiny",
            input_size=16,
            patch_size=2,
            in_channels=12,
            hidden_size=32,
            depth=depth,
            num_heads=2,
            caption_channels=64,
            model_max_length=EMBEDDED_MAX_LENGTH,
            pe_interpolation=1.0,
        )
    )
    save_file(model.state_dict(), str(tmp_path / "model.safetensors"))
    return config, tmp_path / "model.safetensors"


def save_tiny_clip(out: Path) -> Path:
    """A random 2-layer CLIP (32 wide, 16-d projection, 24-px images) with a character-level byte BPE tokenizer and
    CLIP's image processor, saved as a transformers folder like openai/clip-vit-large-patch14."""
    import torch
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPProcessor, CLIPTokenizer
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    chars = list(bytes_to_unicode().values())
    vocab = {c: i for i, c in enumerate(chars)} | {c + "</w>": len(chars) + i for i, c in enumerate(chars)}
    vocab |= {"<|startoftext|>": len(vocab), "<|endoftext|>": len(vocab) + 1}
    tokenizer = CLIPTokenizer(vocab=vocab, merges=[])
    small = dict(hidden_size=32, intermediate_size=37, num_hidden_layers=2, num_attention_heads=4)
    config = CLIPConfig(
        text_config=dict(
            vocab_size=len(vocab),
            max_position_embeddings=77,
            bos_token_id=vocab["<|startoftext|>"],
            eos_token_id=vocab["<|endoftext|>"],
            pad_token_id=vocab["<|endoftext|>"],
            **small,
        ),
        vision_config=dict(image_size=24, patch_size=8, **small),
        projection_dim=16,
    )
    torch.manual_seed(3)  # a seed whose scores on the test images have both signs and a positive mean
    CLIPModel(config).save_pretrained(out)
    image_processor = CLIPImageProcessor(size={"shortest_edge": 24}, crop_size={"height": 24, "width": 24})
    CLIPProcessor(image_processor=image_processor, tokenizer=tokenizer).save_pretrained(out)
    return out
