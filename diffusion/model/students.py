"""The LCM student variants PixArt-delta compares (§3.1) as plain PixArt weights: LCM-LoRA checkpoints merged into
their base, a LoRA exported for diffusers/peft, and a w-embedding student with one guidance scale folded in.

LCM-LoRA (official ``train_pixart_lcm_lora.py``) trains ``peft`` adapters: a checkpoint names the wrapped linear's
weights ``<module>.base_layer.{weight,bias}`` and the adapters ``<module>.lora_A.default.weight`` (r, in) and
``<module>.lora_B.default.weight`` (out, r); merged, ``W = W_base + (alpha / r) B A``. A *partial* checkpoint holds
only the adapters (a model with frozen parameters saves only what it trains); its base weights come from the config's
``weights.base`` (an LCM config's teacher, where the student starts).

A w-embedding student adds ``w_embedder(1000 w)`` to its timestep embedding. For one fixed w that is a constant
vector, i.e. an extra bias of the timestep MLP's last linear: folding it there gives an ordinary PixArt (and
diffusers ``PixArtTransformer2DModel``) that samples exactly like the student at that w.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path

import torch
from safetensors.torch import save_file
from torch import nn

from diffusion.model.diffusers_format import official_to_diffusers
from diffusion.protocols import embeds_guidance

BASE, LORA_A, LORA_B = ".base_layer.", ".lora_A.", ".lora_B."
PEFT_WEIGHTS, PEFT_CONFIG = "adapter_model.safetensors", "adapter_config.json"


def has_lora(state: Mapping[str, torch.Tensor]) -> bool:
    """True when ``state`` holds peft LoRA adapters."""
    return any(LORA_A in k or LORA_B in k for k in state)


def is_partial_lora(state: Mapping[str, torch.Tensor]) -> bool:
    """True when ``state`` holds LoRA adapters but not the weights they adapt (the config's ``weights.base``)."""
    return has_lora(state) and not any(BASE in k for k in state)


def lora_scale(lora_cfg: Mapping | None, source: str = "config") -> tuple[int, float]:
    """(rank, alpha / rank) from a config's ``method.lora`` (alpha defaults to the rank, as ``add_lora``)."""
    if not lora_cfg:
        raise KeyError(f"{source}: the checkpoint holds LoRA adapters but the config has no method.lora (rank, alpha)")
    rank = int(lora_cfg.get("rank", 32))
    return rank, float(lora_cfg.get("alpha") or rank) / rank


def split_lora(state: Mapping[str, torch.Tensor], source: str = "checkpoint"):
    """peft-named ``state`` -> (plain weights, {module: (A (r, in), B (out, r))}); unpaired adapters raise."""
    plain, a, b = {}, {}, {}
    for key, value in state.items():
        if LORA_A in key:
            a[key.split(LORA_A)[0]] = value
        elif LORA_B in key:
            b[key.split(LORA_B)[0]] = value
        else:
            plain[key.replace(BASE, ".")] = value
    if a.keys() != b.keys():
        raise KeyError(f"{source}: LoRA modules without both lora_A and lora_B: {sorted(a.keys() ^ b.keys())}")
    return plain, {m: (a[m], b[m]) for m in sorted(a)}


def merge_lora(
    state: Mapping[str, torch.Tensor],
    rank: int,
    scale: float,
    base: Mapping[str, torch.Tensor] | None = None,
    source: str = "checkpoint",
) -> dict[str, torch.Tensor]:
    """Official-format weights with every adapter merged: ``W = W_base + scale * B @ A`` (computed in float32).

    ``base`` supplies the weights ``state`` lacks (a partial, adapters-only checkpoint); ``state`` wins on overlap.
    """
    plain, adapters = split_lora(state, source)
    merged = {**(base or {}), **plain}
    for module, (a, b) in adapters.items():
        key = f"{module}.weight"
        if key not in merged:
            raise KeyError(f"{source}: LoRA on '{module}' but no base weight '{key}' (checkpoint nor weights.base)")
        w = merged[key]
        if a.shape[0] != rank or b.shape[1] != rank or (b.shape[0], a.shape[1]) != tuple(w.shape):
            raise ValueError(
                f"{source}: LoRA '{module}' A {tuple(a.shape)}, B {tuple(b.shape)} do not fit weight "
                f"{tuple(w.shape)} at the config's rank {rank}"
            )
        merged[key] = (w.float() + scale * (b.float() @ a.float())).to(w.dtype)
    return merged


def export_peft_lora(state: Mapping[str, torch.Tensor], rank: int, alpha: float, out_dir: str | Path) -> Path:
    """Write the adapters of ``state`` as a peft LoRA of diffusers' ``PixArtTransformer2DModel``
    (``PeftModel.from_pretrained(transformer, out_dir)``, as the official PixArt-LCM-LoRA release is used).

    A fused ``qkv`` / ``kv_linear`` adapter becomes one per ``to_q/to_k/to_v``: they share A and split B by rows,
    which is exact (``B_q A`` is the q rows of ``B A``).
    """
    _, adapters = split_lora(state)
    if not adapters:
        raise ValueError("no LoRA adapters in the checkpoint")
    tensors, targets = {}, []
    for module, (a, b) in adapters.items():
        for name, b_part in official_to_diffusers({f"{module}.weight": b})[0].items():
            target = name[: -len(".weight")]
            targets.append(target)
            tensors[f"base_model.model.{target}.lora_A.weight"] = a.clone().contiguous()
            tensors[f"base_model.model.{target}.lora_B.weight"] = b_part.clone().contiguous()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(out_dir / PEFT_WEIGHTS))
    config = dict(
        peft_type="LORA",
        r=rank,
        lora_alpha=alpha,
        target_modules=targets,
        lora_dropout=0.0,
        bias="none",
        fan_in_fan_out=False,
        inference_mode=True,
        base_model_name_or_path=None,
        task_type=None,
    )
    (out_dir / PEFT_CONFIG).write_text(json.dumps(config, indent=2))
    return out_dir


@torch.no_grad()
def fold_guidance_embedding(model: nn.Module, w: float) -> dict[str, torch.Tensor]:
    """State dict of ``model`` without its w-embedding, sampling exactly like ``model`` at guidance ``w``
    (LCM convention, = diffusers' ``guidance_scale - 1``): ``w_embedder(1000 w)`` is added to the timestep MLP's
    output bias. Load it into the same architecture built with ``guidance_embedding=False``."""
    if not embeds_guidance(model):
        raise ValueError("the model has no w-embedding to fold")
    param = next(model.parameters())
    shift = model.w_embedder(torch.tensor([1000.0 * w], device=param.device, dtype=param.dtype))[0]
    state = {k: v.clone() for k, v in model.state_dict().items() if not k.startswith("w_embedder.")}
    state["t_embedder.mlp.2.bias"] += shift.to(state["t_embedder.mlp.2.bias"].dtype)
    return state
