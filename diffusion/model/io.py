"""Reading model weights from any of the formats users have: official ``.pth``, ``.safetensors``, diffusers folders.

Everything is loaded without executing pickled code (``torch.load(weights_only=True)`` / safetensors).
"""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import load_file

from diffusion.model.diffusers_format import load_diffusers


def resolve_checkpoint(path: str | Path, use_ema: bool = True) -> Path:
    """A trainer step folder (``model.safetensors`` [+ ``ema.safetensors``]) -> its weights file; else ``path``."""
    path = Path(path)
    if path.is_dir() and (path / "model.safetensors").is_file():
        ema = path / "ema.safetensors"
        return ema if use_ema and ema.is_file() else path / "model.safetensors"
    return path


def load_state(path: str | Path, key: str | None = None) -> dict[str, torch.Tensor]:
    """Official-format state dict from ``path``.

    - ``*.safetensors``: the tensors as stored;
    - ``*.pth`` / ``*.pt``: ``torch.load(weights_only=True)``; a ``{'state_dict': ...}`` wrapper (official checkpoints)
      is unwrapped, or ``key`` (e.g. ``'state_dict_ema'``) is taken;
    - a directory: a diffusers ``PixArtTransformer2DModel`` folder (converted back to official keys).
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    if path.is_dir():
        inner = path / "transformer" if (path / "transformer").is_dir() else path
        return load_diffusers(inner)[1]
    if path.suffix == ".safetensors":
        return load_file(str(path))
    try:
        obj = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as err:  # a corrupt or non-weights file: name it
        raise ValueError(f"cannot read checkpoint {path}: {err}") from err
    if key is not None:
        if key not in obj:
            raise KeyError(f"checkpoint {path} has no '{key}' (keys: {sorted(obj)[:10]})")
        obj = obj[key]
    elif isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise ValueError(f"checkpoint {path} does not hold a flat tensor state dict")
    return obj


def load_model_weights(
    model: torch.nn.Module, path: str | Path, key: str | None = None, drop_suffixes: tuple[str, ...] = ("pos_embed",)
) -> None:
    """Load ``path`` (any format of :func:`load_state`) into ``model``; every key must match.

    Keys ending in ``drop_suffixes`` (the sin-cos ``pos_embed``, recomputed by the model for its grid) are ignored.
    Raises ``KeyError`` naming every missing or unexpected key.
    """
    load_state_into(model, load_state(path, key), path, drop_suffixes)


def load_state_into(
    model: torch.nn.Module,
    state: dict[str, torch.Tensor],
    source: str | Path,
    drop_suffixes: tuple[str, ...] = ("pos_embed",),
) -> None:
    """:func:`load_model_weights` for a state dict already read from ``source`` (named in errors)."""
    path = source
    state = {k: v for k, v in state.items() if not k.endswith(drop_suffixes)}
    if "y_embedder.y_embedding" not in state and hasattr(model, "y_embedder"):
        raise KeyError(
            f"{path} has no 'y_embedder.y_embedding' (the learned null caption); a diffusers folder needs the "
            "y_embedding.safetensors side file written by tools/convert_diffusers.py"
        )
    result = model.load_state_dict(state, strict=False)
    missing = [k for k in result.missing_keys if not k.endswith(drop_suffixes)]
    if missing or result.unexpected_keys:
        raise KeyError(f"{path}: missing keys {missing}, unexpected keys {list(result.unexpected_keys)}")
