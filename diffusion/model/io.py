"""Reading model weights from any of the formats users have: official ``.pth``, ``.safetensors``, diffusers folders.

Everything is loaded without executing pickled code (``torch.load(weights_only=True)`` / safetensors).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
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
        return _read(inner, "a diffusers transformer folder", lambda p: load_diffusers(p)[1])
    if path.suffix == ".safetensors":
        return _read(path, "a .safetensors file", lambda p: load_file(str(p)))
    obj = _read(path, "a torch.load(weights_only=True) file", lambda p: torch.load(str(p), "cpu", weights_only=True))
    if key is not None:
        if key not in obj:
            raise KeyError(f"checkpoint {path} has no '{key}' (keys: {sorted(obj)[:10]})")
        obj = obj[key]
    elif isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise ValueError(f"checkpoint {path} does not hold a flat tensor state dict")
    return obj


def _read(path: Path, kind: str, read: Callable[[Path], object]):
    """``read(path)``; a corrupt, truncated or non-weights file is a ``ValueError`` naming it (a missing one stays a
    ``FileNotFoundError``)."""
    try:
        return read(path)
    except FileNotFoundError:
        raise
    except Exception as err:
        raise ValueError(f"checkpoint {path} cannot be read as {kind} (truncated or corrupt?): {err}") from err


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
    if not hasattr(model, "controlnet") and any(k.startswith("controlnet.") for k in state):
        raise KeyError(
            f"{path} is a ControlNet checkpoint (controlnet.* keys) but the network is a plain PixArt: use a config "
            "with a controlnet section (e.g. configs/controlnet/tiny_controlnet.py)"
        )
    check_fits(model.state_dict(), state, path)
    if "y_embedder.y_embedding" not in state and hasattr(model, "y_embedder"):
        raise KeyError(
            f"{path} has no 'y_embedder.y_embedding' (the learned null caption); a diffusers folder needs the "
            "y_embedding.safetensors side file written by tools/convert_diffusers.py"
        )
    result = model.load_state_dict(state, strict=False)
    missing = [k for k in result.missing_keys if not k.endswith(drop_suffixes)]
    if missing or result.unexpected_keys:
        raise KeyError(f"{path}: missing keys {missing}, unexpected keys {list(result.unexpected_keys)}")


# The tensors whose dims are config keys: dim -> the ``model`` key that sets it. Any other tensor of another shape
# points at hidden_size (every block's width).
DIM_KEYS = {
    "x_embedder.proj.weight": {0: "hidden_size", 1: "in_channels", 2: "patch_size", 3: "patch_size"},
    "y_embedder.y_embedding": {0: "model_max_length", 1: "caption_channels"},
    "y_embedder.y_proj.fc1.weight": {0: "hidden_size", 1: "caption_channels"},
    "final_layer.linear.weight": {0: "in_channels", 1: "hidden_size"},
}
STACKS = {r"(?:base_model\.)?blocks\.(\d+)\.": "model.depth", r"controlnet\.(\d+)\.": "controlnet.copy_blocks"}


def check_fits(expected: Mapping[str, torch.Tensor], state: Mapping[str, torch.Tensor], source: str | Path) -> None:
    """Raise ``ValueError`` naming ``source`` when ``state`` is of another architecture than ``expected`` (a model's
    state dict): the first mismatching tensors with both shapes, and the config keys that likely differ."""
    mismatched = [(k, tuple(v.shape), tuple(expected[k].shape)) for k, v in state.items() if k in expected]
    # the tensors that name a config key first: they tell the user most
    mismatched = sorted((m for m in mismatched if m[1] != m[2]), key=lambda m: not m[0].endswith(tuple(DIM_KEYS)))
    suspects = {key for m in mismatched for key in _config_keys(*m)}
    notes = [f"{k}: checkpoint {got}, model {want}" for k, got, want in mismatched[:3]]
    for pattern, config_key in STACKS.items():
        have, want = _indices(pattern, state), _indices(pattern, expected)
        if have and have != want:
            suspects.add(config_key)
            notes.append(f"{config_key}: checkpoint {len(have)} blocks, model {len(want)}")
    if suspects:
        raise ValueError(
            f"{source} does not fit the config's network ({len(mismatched)} tensors of another shape): "
            f"{'; '.join(notes)}. Config keys that likely differ: {', '.join(sorted(suspects))}"
        )


def _config_keys(key: str, got: tuple[int, ...], want: tuple[int, ...]) -> set[str]:
    for name, dims in DIM_KEYS.items():
        if key.endswith(name) and len(got) == len(want):
            return {f"model.{dims[i]}" for i, (a, b) in enumerate(zip(got, want)) if a != b}
    return {"model.hidden_size"}


def _indices(pattern: str, state: Mapping[str, torch.Tensor]) -> set[int]:
    return {int(m.group(1)) for k in state if (m := re.match(pattern, k))}
