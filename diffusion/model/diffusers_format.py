"""Key map between official PixArt checkpoints and diffusers' ``PixArtTransformer2DModel`` (save_pretrained layout).

The map is pure tensor bookkeeping (diffusers is not imported): fused ``qkv``/``kv_linear`` are split into
``to_q/to_k/to_v`` and back. diffusers has no slot for the learned null caption ``y_embedding`` nor for the position
table, so ``y_embedding`` travels as a side file (``y_embedding.safetensors``) and the position table is recomputed.

PixArt-Sigma: a checkpoint without micro-conditions is written with ``use_additional_conditions: false`` explicitly
(diffusers turns it on by itself at ``sample_size`` 128) and its ``interpolation_scale`` (0.5 at 256 px). Two Σ
options have no diffusers equivalent and are refused with the reason (:data:`KV_COMPRESS_REFUSAL`,
:data:`QK_NORM_REFUSAL`) rather than written as a model that computes something else.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

DIFFUSERS_WEIGHTS = "diffusion_pytorch_model.safetensors"
NULL_CAPTION_FILE = "y_embedding.safetensors"

# (official prefix, diffusers prefix) for tensors copied unchanged; block keys are handled separately.
_RENAMES = [
    ("x_embedder.proj.", "pos_embed.proj."),
    ("y_embedder.y_proj.fc1.", "caption_projection.linear_1."),
    ("y_embedder.y_proj.fc2.", "caption_projection.linear_2."),
    ("t_embedder.mlp.0.", "adaln_single.emb.timestep_embedder.linear_1."),
    ("t_embedder.mlp.2.", "adaln_single.emb.timestep_embedder.linear_2."),
    ("csize_embedder.mlp.0.", "adaln_single.emb.resolution_embedder.linear_1."),
    ("csize_embedder.mlp.2.", "adaln_single.emb.resolution_embedder.linear_2."),
    ("ar_embedder.mlp.0.", "adaln_single.emb.aspect_ratio_embedder.linear_1."),
    ("ar_embedder.mlp.2.", "adaln_single.emb.aspect_ratio_embedder.linear_2."),
    ("t_block.1.", "adaln_single.linear."),
    ("final_layer.linear.", "proj_out."),
    ("final_layer.scale_shift_table", "scale_shift_table"),
]
_BLOCK_RENAMES = [
    ("scale_shift_table", "scale_shift_table"),
    ("attn.proj.", "attn1.to_out.0."),
    ("cross_attn.q_linear.", "attn2.to_q."),
    ("cross_attn.proj.", "attn2.to_out.0."),
    ("mlp.fc1.", "ff.net.0.proj."),
    ("mlp.fc2.", "ff.net.2."),
]
_BLOCK_SPLITS = [
    ("attn.qkv.", "attn1.", ("to_q", "to_k", "to_v")),
    ("cross_attn.kv_linear.", "attn2.", ("to_k", "to_v")),
]
_OFFICIAL_BLOCK = re.compile(r"^blocks\.(\d+)\.(.+)$")
_DIFFUSERS_BLOCK = re.compile(r"^transformer_blocks\.(\d+)\.(.+)$")

KV_COMPRESS_REFUSAL = (
    "diffusers' PixArtTransformer2DModel has no KV-compressed self-attention (PixArt-Sigma kv_compress_config: "
    "keys and values pooled on the token grid), so it cannot hold this model; keep it in the official format"
)
QK_NORM_REFUSAL = (
    "official PixArt-Sigma qk_norm is one LayerNorm(hidden_size) over all heads' q and k together, while diffusers' "
    "norm_q / norm_k (Attention(qk_norm='layer_norm')) normalise each head with LayerNorm(head_dim), a different "
    "function, and PixArtTransformer2DModel has no qk_norm option; refusing rather than writing a wrong model"
)
_OFFICIAL_REFUSED = [
    (re.compile(r"\.attn\.(?:sr|norm)\."), KV_COMPRESS_REFUSAL),
    (re.compile(r"\.attn\.[qk]_norm\."), QK_NORM_REFUSAL),
]
_DIFFUSERS_REFUSED = [(re.compile(r"\.attn1\.(?:norm_q|norm_k|q_norm|k_norm)\."), QK_NORM_REFUSAL)]


def _refuse(keys, rules, what: str) -> None:
    for pattern, reason in rules:
        found = sorted(k for k in keys if pattern.search(k))
        if found:
            raise ValueError(f"{what} has {found[:4]}{' ...' if len(found) > 4 else ''}: {reason}")


def official_to_diffusers(state: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], torch.Tensor | None]:
    """Official state dict -> (diffusers state dict, y_embedding or None). ``pos_embed`` is dropped.

    A KV-compression (``attn.sr`` / ``attn.norm``) or qk-norm key is a ``ValueError`` saying why diffusers cannot
    hold it."""
    _refuse(state, _OFFICIAL_REFUSED, "the checkpoint")
    out, y_embedding = {}, None
    for key, value in state.items():
        if key == "pos_embed":
            continue
        if key == "y_embedder.y_embedding":
            y_embedding = value
            continue
        match = _OFFICIAL_BLOCK.match(key)
        if match:
            out.update(_block_to_diffusers(f"transformer_blocks.{match[1]}.", match[2], value))
            continue
        out[_rename(key, _RENAMES)] = value
    return out, y_embedding


def diffusers_to_official(state: dict[str, torch.Tensor], y_embedding: torch.Tensor | None) -> dict[str, torch.Tensor]:
    """Inverse of :func:`official_to_diffusers` (q/k/v concatenated back into ``qkv`` and ``kv_linear``); a
    per-head qk-norm (``attn1.norm_q`` / ``norm_k``) is refused: it is not PixArt-Sigma's qk-norm."""
    _refuse(state, _DIFFUSERS_REFUSED, "the diffusers checkpoint")
    out, split_parts = {}, {}
    for key, value in state.items():
        match = _DIFFUSERS_BLOCK.match(key)
        if not match:
            out[_rename(key, [(d, o) for o, d in _RENAMES])] = value
            continue
        index, rest = match[1], match[2]
        for official, diffusers, names in _BLOCK_SPLITS:
            part = next((n for n in names if rest.startswith(f"{diffusers}{n}.")), None)
            if part is not None:
                suffix = rest.split(".")[-1]
                split_parts.setdefault((index, official, suffix), {})[part] = value
                break
        else:
            out[f"blocks.{index}.{_rename(rest, [(d, o) for o, d in _BLOCK_RENAMES])}"] = value
    for (index, official, suffix), parts in split_parts.items():
        names = next(n for o, _, n in _BLOCK_SPLITS if o == official)
        missing = [n for n in names if n not in parts]
        if missing:
            raise KeyError(f"block {index}: {official}{suffix} is missing parts {missing}")
        out[f"blocks.{index}.{official}{suffix}"] = torch.cat([parts[n] for n in names], dim=0)
    if y_embedding is not None:
        out["y_embedder.y_embedding"] = y_embedding
    return out


def _block_to_diffusers(prefix: str, rest: str, value: torch.Tensor) -> dict[str, torch.Tensor]:
    for official, diffusers, names in _BLOCK_SPLITS:
        if rest.startswith(official):
            suffix = rest[len(official) :]
            return {f"{prefix}{diffusers}{n}.{suffix}": v for n, v in zip(names, value.chunk(len(names), dim=0))}
    return {prefix + _rename(rest, _BLOCK_RENAMES): value}


def _rename(key: str, table: list[tuple[str, str]]) -> str:
    for src, dst in table:
        if key.startswith(src):
            return dst + key[len(src) :]
    raise KeyError(f"no conversion rule for key '{key}'")


def diffusers_config(model) -> dict:
    """The ``config.json`` of a ``PixArtTransformer2DModel`` equivalent to our ``PixArt``/``PixArtMS`` ``model``.

    A KV-compressing or qk-norm model (PixArt-Sigma options diffusers lacks) is a ``ValueError`` saying why."""
    if model.kv_compress_config:
        raise ValueError(f"kv_compress_config={model.kv_compress_config}: {KV_COMPRESS_REFUSAL}")
    if model.qk_norm:
        raise ValueError(f"qk_norm=True: {QK_NORM_REFUSAL}")
    head_dim = model.hidden_size // model.blocks[0].attn.num_heads
    return {
        "_class_name": "PixArtTransformer2DModel",
        "num_attention_heads": model.blocks[0].attn.num_heads,
        "attention_head_dim": head_dim,
        "in_channels": model.in_channels,
        "out_channels": model.out_channels,
        "num_layers": len(model.blocks),
        "cross_attention_dim": model.hidden_size,
        "attention_bias": True,
        "sample_size": model.input_size,
        "patch_size": model.patch_size,
        "activation_fn": "gelu-approximate",
        "num_embeds_ada_norm": 1000,
        "norm_type": "ada_norm_single",
        "norm_elementwise_affine": False,
        "norm_eps": 1e-6,
        "interpolation_scale": model.pe_interpolation,
        "use_additional_conditions": bool(model.use_micro_conditions),  # explicit: None means True at 128
        "caption_channels": model.caption_channels,
    }


def model_kwargs_from_diffusers_config(config: dict) -> tuple[str, dict]:
    """(registered model type, constructor kwargs) that rebuild a diffusers transformer config as our model."""
    sample_size = config.get("sample_size", 128)
    use_micro = config.get("use_additional_conditions")
    use_micro = sample_size == 128 if use_micro is None else use_micro
    interp = config.get("interpolation_scale") or max(sample_size // 64, 1)
    kwargs = dict(
        input_size=sample_size,
        patch_size=config.get("patch_size", 2),
        in_channels=config.get("in_channels", 4),
        hidden_size=config["num_attention_heads"] * config["attention_head_dim"],
        depth=config["num_layers"],
        num_heads=config["num_attention_heads"],
        pred_sigma=config.get("out_channels", 8) == 2 * config.get("in_channels", 4),
        caption_channels=config["caption_channels"],
        pe_interpolation=float(interp),
    )
    return ("PixArtMS" if use_micro else "PixArt"), kwargs


def save_diffusers(model, directory: str | Path, state: dict[str, torch.Tensor] | None = None) -> Path:
    """Write ``model`` (or ``state`` in official format with ``model``'s architecture) as a diffusers folder."""
    directory = Path(directory)
    state = model.state_dict() if state is None else state
    config = diffusers_config(model)  # refusals before anything is written
    weights, y_embedding = official_to_diffusers(state)
    directory.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in weights.items()}, str(directory / DIFFUSERS_WEIGHTS))
    if y_embedding is not None:
        save_file({"y_embedding": y_embedding.contiguous()}, str(directory / NULL_CAPTION_FILE))
    (directory / "config.json").write_text(json.dumps(config, indent=2))
    return directory


def load_diffusers(directory: str | Path) -> tuple[dict, dict[str, torch.Tensor]]:
    """Read a diffusers transformer folder -> (its config, official-format state dict incl. y_embedding if kept)."""
    directory = Path(directory)
    for name in ("config.json", DIFFUSERS_WEIGHTS):
        if not (directory / name).is_file():
            raise FileNotFoundError(f"{directory / name} not found: not a diffusers transformer folder")
    config = json.loads((directory / "config.json").read_text())
    null = directory / NULL_CAPTION_FILE
    y_embedding = load_file(str(null))["y_embedding"] if null.is_file() else None
    return config, diffusers_to_official(load_file(str(directory / DIFFUSERS_WEIGHTS)), y_embedding)


def diffusers_forward(transformer, x, timestep, y, mask=None, data_info=None) -> torch.Tensor:
    """Call a diffusers ``PixArtTransformer2DModel`` with our forward's arguments (for parity checks and benchmarks).

    x (B,C,H,W), timestep (B,), y (B,1,L,C_text), mask (B,L), data_info {'img_hw', 'aspect_ratio'} -> (B,C_out,H,W).
    """
    use_micro = transformer.config.use_additional_conditions
    cond = {
        "resolution": data_info["img_hw"] if use_micro else None,
        "aspect_ratio": data_info["aspect_ratio"] if use_micro else None,
    }
    return transformer(
        x,
        encoder_hidden_states=y.squeeze(1),
        timestep=timestep,
        added_cond_kwargs=cond,
        encoder_attention_mask=mask,
        return_dict=False,
    )[0]
