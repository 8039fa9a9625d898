"""Loading a ControlNet's weights (PixArt-delta §4): the three layouts a ControlNet file comes in, the base it keeps or
takes from the file, and a distillation teacher's base under the student's copies.

Layouts (see :meth:`diffusion.model.controlnet._ControlWrapper.load_state_dict`): the official full file
(``base_model.*`` + ``controlnet.*``, the released ``PixArt-XL-2-*-ControlNet.pth``), a trainer checkpoint of the
trainable weights (``controlnet.*`` only: the frozen base comes from elsewhere) and a plain PixArt file (the base,
with fresh copies of its blocks). :func:`diffusion.model.io.load_state_into` sends every ControlNet target here, so
``load_model_weights(controlnet, official.pth)`` loads the file; ``diffusion.build`` adds what only a config knows
(whether ``weights.base`` is the base).
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping
from pathlib import Path

import torch
from torch import nn

from diffusion.model.io import (
    NULL_KEY,
    check_fits,
    describe_state,
    key_hints,
    load_state,
    load_state_into,
    with_null_caption,
)
from diffusion.protocols import ControlledModel

BASE_PREFIX, CONTROL_PREFIX = "base_model.", "controlnet."


def load_controlnet_state(
    model: nn.Module,
    state: Mapping[str, torch.Tensor],
    source: str | Path,
    keep_base: bool,
    null_caption: str | Path | None = None,
) -> None:
    """Load ``state`` (read from ``source``, named in errors) into the ControlNet ``model``.

    ``keep_base``: the base ``model`` holds stays (the config's ``weights.base``): an official full file gives only
    its copies, with a warning when its own base differs (the controllable LCM puts a ControlNet trained on
    PixArt-alpha on the LCM student's base). Otherwise the file is loaded as it is: a full file whole, a plain PixArt
    file as the base (copies re-initialised from it), ``controlnet.*`` alone onto the base ``model`` already holds.
    ``null_caption``: the config's T5("") file, the base's ``y_embedding`` when the file brings the base
    (:func:`diffusion.model.io.with_null_caption`). A file of another kind (LoRA adapters, a null caption file) is a
    ``ValueError`` naming it; another architecture ``ValueError``, a missing or unexpected key ``KeyError``.
    """
    kind = describe_state(state)
    if "LoRA" in kind or kind.startswith(("a null caption", "none of")):
        raise ValueError(
            f"{source} holds {kind}, not ControlNet weights: a ControlNet loads the official full file, a trainer "
            "checkpoint of its copies (controlnet.*) or a plain PixArt file as its base"
        )
    state = dict(state)
    full = any(k.startswith(BASE_PREFIX) for k in state)
    if full and keep_base:
        _warn_if_base_differs(model, state, source)
        state = {k: v for k, v in state.items() if not k.startswith(BASE_PREFIX)}
    prefixed = any(k.startswith((BASE_PREFIX, CONTROL_PREFIX)) for k in state)
    if not prefixed:  # a plain PixArt file: the base (null caption and all, as any PixArt), then fresh copies
        load_state_into(model.base_model, state, source, null_caption=null_caption)
        model.reset_copies()
        return
    if full and null_caption is not None:
        base = with_null_caption(model.base_model, _base_part(state), null_caption, source)
        state[BASE_PREFIX + NULL_KEY] = base[NULL_KEY]
    check_fits(model.state_dict(), state, source)
    try:
        model.load_state_dict(state, strict=True)
    except (RuntimeError, KeyError) as err:
        hints = key_hints(str(err).replace('"', " ").split())
        raise KeyError(
            f"{source}: {err}" + (f" Config keys that likely differ: {'; '.join(hints)}" if hints else "")
        ) from err


def _base_part(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k[len(BASE_PREFIX) :]: v for k, v in state.items() if k.startswith(BASE_PREFIX)}


def _warn_if_base_differs(model: nn.Module, state: Mapping[str, torch.Tensor], source: str | Path) -> None:
    base = model.base_model.state_dict()
    differs = [
        k
        for k, v in _base_part(state).items()
        if not k.endswith("pos_embed") and (k not in base or not torch.equal(v.to(base[k]), base[k]))
    ]
    if differs:
        warnings.warn(
            f"{source} carries its own base ({len(differs)} tensors differ from the config's weights.base, e.g. "
            f"{BASE_PREFIX}{differs[0]}); the base stays weights.base and only the file's ControlNet copies are "
            "loaded",
            stacklevel=3,
        )


def load_teacher_weights(model: nn.Module, source: str | Path | Mapping[str, torch.Tensor]) -> None:
    """Load a distillation teacher's weights (``weights.teacher``: a file or a state dict) into ``model``, a frozen
    copy of the student.

    For a ControlNet ``model``: a plain PixArt-alpha file fills its base and keeps its copies (the ControlNet trained
    on that teacher, route (b) of the controllable LCM), an official full ControlNet file fills both; the copies alone
    are no teacher (a ``ValueError`` saying what a teacher file is). For a plain PixArt: the whole network.
    """
    state = load_state(source) if isinstance(source, (str, Path)) else dict(source)
    name = source if isinstance(source, (str, Path)) else "weights.teacher (a state dict)"
    if not isinstance(model, ControlledModel):
        load_state_into(model, state, name)
    elif any(k.startswith(BASE_PREFIX) for k in state):
        load_controlnet_state(model, state, name, keep_base=False)
    elif any(k.startswith(CONTROL_PREFIX) for k in state):
        raise ValueError(
            f"weights.teacher {name} holds {describe_state(state)}: a teacher under a ControlNet is a PixArt file "
            "(its base; the copies are the student's) or an official full ControlNet file"
        )
    else:
        load_state_into(model.base_model, state, name)
