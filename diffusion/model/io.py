"""Reading model weights from any of the formats users have: official ``.pth``, ``.safetensors``, diffusers folders.

Everything is loaded without executing pickled code (``torch.load(weights_only=True)`` / safetensors).

The null caption (``y_embedder.y_embedding``, the unconditional input of classifier-free guidance and of the LCM
teacher): PixArt-alpha checkpoints carry their own. PixArt-Sigma's is T5("") at 300 tokens, which the official Σ
loader writes over every checkpoint's ``y_embedding`` on each load from ``null_embed_diffusers_300token.pth``; a
config names that file here as ``weights.null_caption`` (``tools/make_null_caption.py`` writes it, the
format ``method.null_caption`` reads: ``y`` (1, 1, L, C) in a .safetensors file). The rule (:func:`with_null_caption`):
the file, when it exists, is the null caption whatever the checkpoint holds (a checkpoint of another length, e.g.
PixArt-alpha's 120 tokens, then loads too); a checkpoint without ``y_embedding`` (a diffusers folder) needs it (an
error names the file); a missing file with a checkpoint that has one keeps the checkpoint's, with a warning.

One way to load weights into a network: :func:`load_model_weights` / :func:`load_state_into` take any network this
repository builds, a ControlNet included (its file goes through :func:`diffusion.model.controlnet_io
.load_controlnet_state`). A file of another kind than the network takes (ControlNet weights into a plain PixArt, LoRA
adapters without their base, a null caption file, a trainer or peft folder) is an error naming the file, what it
holds (:func:`describe_state`) and what to call instead.
"""

from __future__ import annotations

import re
import warnings
from collections.abc import Callable, Mapping
from pathlib import Path

import torch
from safetensors.torch import load_file

from diffusion.model.diffusers_format import load_diffusers
from diffusion.model.students import BASE as LORA_BASE
from diffusion.model.students import LORA_A, LORA_B
from diffusion.protocols import ControlledModel


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
    - a directory: a trainer step folder (its ``ema.safetensors`` when present, else ``model.safetensors``, as
      :func:`resolve_checkpoint`) or a diffusers ``PixArtTransformer2DModel`` folder (converted back to official
      keys); a peft LoRA folder is refused, naming what to load instead.
    """
    path = resolve_checkpoint(path)
    if not path.exists():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    if path.is_dir():
        if (path / "adapter_config.json").is_file():
            raise ValueError(
                f"{path} is a peft LoRA folder (diffusers names, for PeftModel.from_pretrained on diffusers' "
                "PixArtTransformer2DModel): load the trainer checkpoint it was exported from with its LCM-LoRA "
                "config instead (diffusion.build.load_model merges the adapters into their base)"
            )
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
    model: torch.nn.Module,
    path: str | Path,
    key: str | None = None,
    drop_suffixes: tuple[str, ...] = ("pos_embed",),
    null_caption: str | Path | None = None,
) -> None:
    """Load ``path`` (any format of :func:`load_state`) into ``model``; every key must match.

    Keys ending in ``drop_suffixes`` (the sin-cos ``pos_embed``, recomputed by the model for its grid) are ignored.
    ``null_caption``: the config's null caption file (PixArt-Sigma), see :func:`with_null_caption`. A KV-compressed
    model accepts a checkpoint without its compression weights (``PixArt.load_state_dict``: mean-pool init, warned).
    Raises ``KeyError`` naming every missing or unexpected key and the config keys they point at.
    """
    load_state_into(model, load_state(path, key), path, drop_suffixes, null_caption)


def load_state_into(
    model: torch.nn.Module,
    state: dict[str, torch.Tensor],
    source: str | Path,
    drop_suffixes: tuple[str, ...] = ("pos_embed",),
    null_caption: str | Path | None = None,
) -> None:
    """:func:`load_model_weights` for a state dict already read from ``source`` (named in errors). A ControlNet
    ``model`` takes its file through :func:`diffusion.model.controlnet_io.load_controlnet_state` (the official full
    layout loads whole, ``controlnet.*`` alone onto the base it holds, a plain PixArt file as its base)."""
    path = source
    if isinstance(model, ControlledModel):
        from diffusion.model.controlnet_io import load_controlnet_state  # lazy: it reads files through this module

        load_controlnet_state(model, state, source, keep_base=False, null_caption=null_caption)
        return
    refuse_other_kind(state, source)
    state = {k: v for k, v in state.items() if not k.endswith(drop_suffixes)}
    if null_caption is not None and hasattr(model, "y_embedder"):
        state = with_null_caption(model, state, null_caption, path)
    check_fits(model.state_dict(), state, path)
    if NULL_KEY not in state and hasattr(model, "y_embedder"):
        raise KeyError(
            f"{path} has no '{NULL_KEY}' (the null caption); a diffusers folder needs the y_embedding.safetensors "
            "side file written by tools/convert_diffusers.py, or a config naming a weights.null_caption file (T5(''), "
            "tools/make_null_caption.py)"
        )
    result = model.load_state_dict(state, strict=False)
    missing = [k for k in result.missing_keys if not k.endswith(drop_suffixes)]
    if missing or result.unexpected_keys:
        hints = key_hints([*missing, *result.unexpected_keys])
        raise KeyError(
            f"{path}: missing keys {missing}, unexpected keys {list(result.unexpected_keys)}"
            + (f". Config keys that likely differ: {'; '.join(hints)}" if hints else "")
        )


NULL_KEY = "y_embedder.y_embedding"
NULL_FILE_KEYS = {"y", "y_mask"}  # what tools/make_null_caption.py writes


def describe_state(state: Mapping[str, torch.Tensor]) -> str:
    """What kind of weights ``state`` holds, in words for an error message."""
    keys = list(state)
    lora = any(LORA_A in k or LORA_B in k for k in keys)
    if keys and set(keys) <= NULL_FILE_KEYS:
        return "a null caption file (y = T5(''), written by tools/make_null_caption.py), not network weights"
    if lora and not any(LORA_BASE in k for k in keys):
        return "LoRA adapters only (peft lora_A / lora_B, a LoRA student's training checkpoint), without their base"
    if lora:
        return "a LoRA student with its base (peft names: base_layer, lora_A, lora_B)"
    if any(k.startswith("base_model.") for k in keys) and any(k.startswith("controlnet.") for k in keys):
        return "an official full ControlNet file (base_model.* and controlnet.*)"
    if keys and all(k.startswith("controlnet.") for k in keys):
        return "a ControlNet's trainable weights only (controlnet.*, a trainer checkpoint of a ControlNet run)"
    if any(k.startswith("controlnet.") for k in keys):
        return "ControlNet weights (controlnet.*)"
    if any(k.startswith(("blocks.", "x_embedder.", "y_embedder.")) for k in keys):
        return "PixArt weights"
    return f"none of the weight layouts read here (keys: {keys[:5]})"


def refuse_other_kind(state: Mapping[str, torch.Tensor], source: str | Path) -> None:
    """Raise ``ValueError`` naming ``source``, what it holds and what to call instead when ``state`` is not a plain
    PixArt's weights (ControlNet weights, LoRA adapters, a null caption file); plain weights pass."""
    kind = describe_state(state)
    if kind.startswith("a null caption file"):
        todo = "name it as the config's weights.null_caption (or method.null_caption for the LCM teacher's guidance)"
    elif "ControlNet" in kind:
        todo = (
            "load it into a ControlNet: a config with a controlnet section (e.g. "
            "configs/controlnet/tiny_controlnet.py), as its weights.controlnet or with "
            "diffusion.build.load_model(cfg, file)"
        )
    elif "LoRA" in kind:
        todo = (
            "load it with its LCM-LoRA config: diffusion.build.load_model(cfg, file) merges the adapters into "
            "weights.base at method.lora's alpha / rank"
        )
    else:
        return
    raise ValueError(f"{source} holds {kind}, but the network is a plain PixArt: {todo}")


# Key families that only some architectures have -> the config key that adds them.
_KEY_FAMILIES = [
    (
        r"(?:^|\.)(?:csize|ar)_embedder\.",
        "model.micro_condition (PixArt-alpha MS checkpoints have size/aspect-ratio embedders, PixArt-Sigma's do not)",
    ),
    (r"\.attn\.[qk]_norm\.", "model.qk_norm"),
    (r"\.attn\.(?:sr|norm)\.", "model.kv_compress_config"),
    (r"(?:^|\.)w_embedder\.", "model.guidance_embedding"),
]


def key_hints(keys: list[str]) -> list[str]:
    """The config keys that add or remove the families of ``keys`` (missing or unexpected state-dict keys)."""
    return [hint for pattern, hint in _KEY_FAMILIES if any(re.search(pattern, k) for k in keys)]


def read_null_caption(path: str | Path, length: int, channels: int) -> torch.Tensor:
    """The null caption ``y`` (L, C) of a file written by ``tools/make_null_caption.py`` (``y`` (1, 1, L, C)).

    A missing file is a ``FileNotFoundError``, another length / width a ``ValueError`` naming the file and the
    config keys (``model.model_max_length``, ``model.caption_channels``)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"null caption file {path} not found ({_WRITE_NULL.format(length=length, out=path)})")
    y = read_null_file(path)["y"]
    if tuple(y.shape[-2:]) != (length, channels) or y.numel() != length * channels:
        raise ValueError(
            f"null caption file {path} holds y of shape {tuple(y.shape)}; the model needs (1, 1, {length}, "
            f"{channels}) (model.model_max_length, model.caption_channels): "
            + _WRITE_NULL.format(length=length, out=path)
        )
    return y.reshape(length, channels).float()


def read_null_file(path: str | Path, what: str = "null caption file") -> dict[str, torch.Tensor]:
    """The tensors of a null caption file (``y``, optionally ``y_mask``); a file without ``y`` is a ``KeyError``
    naming it, ``what`` (the config key) and what it holds instead (e.g. model weights)."""
    path = Path(path)
    tensors = _read(path, "a .safetensors null caption file", lambda p: load_file(str(p)))
    if "y" not in tensors:
        raise KeyError(
            f"{what} {path} holds no 'y' tensor: it holds {describe_state(tensors)} "
            f"(keys: {sorted(tensors)[:5]}); a null caption file is written by tools/make_null_caption.py"
        )
    return tensors


_WRITE_NULL = (
    "write T5('') there with tools/make_null_caption.py --text-encoder T5_DIR --max-length {length} --out {out}"
)


def with_null_caption(
    model: torch.nn.Module, state: dict[str, torch.Tensor], null_caption: str | Path, source: str | Path
) -> dict[str, torch.Tensor]:
    """``state`` whose ``y_embedding`` is the config's null caption file (the official PixArt-Sigma loader's rule).

    - the file exists: its ``y`` replaces the checkpoint's ``y_embedding`` (or fills a missing one, a diffusers
      folder); a checkpoint value of another shape or clearly other values (> 5% of the largest entry: not only fp16
      rounding) is reported with a warning;
    - the file is missing and the checkpoint has a ``y_embedding``: kept, with a warning naming the file;
    - both missing: ``FileNotFoundError`` naming the file and how to write it.
    """
    length, channels = model.y_embedder.y_embedding.shape
    path, ours = Path(null_caption), state.get(NULL_KEY)
    if not path.is_file():
        if ours is None:
            raise FileNotFoundError(
                f"{source} has no '{NULL_KEY}' (a diffusers folder) and the config's null_caption file {path} does "
                f"not exist: {_WRITE_NULL.format(length=length, out=path)}"
            )
        warnings.warn(
            f"null_caption file {path} not found: the null caption stays {source}'s y_embedding "
            f"({_WRITE_NULL.format(length=length, out=path)})",
            stacklevel=3,
        )
        return state
    null = read_null_caption(path, length, channels)
    if ours is not None:
        scale = float(null.abs().max().clamp_min(1e-12))
        if ours.shape != null.shape or float((ours.float() - null).abs().max()) > 0.05 * scale:
            warnings.warn(
                f"{source}'s y_embedding {tuple(ours.shape)} differs from the null caption file {path}; the file "
                "replaces it (PixArt-Sigma's null caption is T5(''), as the official loader does)",
                stacklevel=3,
            )
    return {**state, NULL_KEY: null}


def set_null_caption(model: torch.nn.Module, null_caption: str | Path) -> None:
    """Write the null caption file into ``model``'s ``y_embedding`` (a model trained from scratch)."""
    y_embedding = model.y_embedder.y_embedding
    with torch.no_grad():
        y_embedding.copy_(read_null_caption(null_caption, *y_embedding.shape))


# The tensors whose dims are config keys: dim -> the ``model`` key that sets it. Any other tensor of another shape
# points at hidden_size (every block's width).
DIM_KEYS = {
    "x_embedder.proj.weight": {0: "hidden_size", 1: "in_channels", 2: "patch_size", 3: "patch_size"},
    "y_embedder.y_embedding": {0: "model_max_length", 1: "caption_channels"},
    "y_embedder.y_proj.fc1.weight": {0: "hidden_size", 1: "caption_channels"},
    "final_layer.linear.weight": {0: "in_channels", 1: "hidden_size"},
    "attn.sr.weight": {0: "hidden_size", 2: "kv_compress_config", 3: "kv_compress_config"},
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
