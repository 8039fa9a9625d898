"""The trainer's config schema: which top-level keys and sub-keys exist, their defaults and allowed values.

An unknown or missing key is an error that names it (the official PixArt configs carry keys nothing reads, e.g.
``w_min``/``w_max`` in the LCM recipe of PixArt-δ §3.3; here such a key fails loudly).
"""

from typing import Any

REQUIRED = object()

TOP_LEVEL_KEYS = (
    "model",
    "load_from",
    "method",
    "data",
    "data_sampler",
    "codec",
    "text_encoder",
    "optimizer",
    "lr_schedule",
    "train",
    "checkpoint",
    "log",
    "validation",
    "controlnet",
)
REQUIRED_TOP_LEVEL = ("model", "method", "data", "optimizer", "train")

SECTION_DEFAULTS: dict[str, dict[str, Any]] = {
    "train": dict(
        max_steps=REQUIRED,
        batch_size=REQUIRED,
        grad_accum=1,
        grad_clip=1.0,
        mixed_precision="no",
        ema_rate=None,
        seed=43,
        num_workers=2,
        parallel="ddp",
        auto_lr=None,
        max_nan_steps=5,
    ),
    "lr_schedule": dict(type="constant", warmup_steps=0, min_lr_ratio=0.0),
    "checkpoint": dict(every=1000, keep_last=2),
    "log": dict(every=10, wandb_project="pixart-delta", wandb_name=None),
    "validation": dict(every=500, prompts=REQUIRED, seed=0, sampler=None),
    # PixArt-delta §4: wrap cfg.model (holding cfg.load_from) in a ControlNet; load_from = ControlNet weights (the
    # official full file or a training checkpoint of the trainable weights). copy_blocks None: depth // 2 for "unet".
    "controlnet": dict(copy_blocks=13, topology="transformer", load_from=None),
}

ALLOWED_VALUES: dict[tuple[str, str], tuple] = {
    ("train", "mixed_precision"): ("no", "bf16", "fp16"),
    ("train", "parallel"): ("ddp", "fsdp"),
    ("train", "auto_lr"): (None, "sqrt", "linear"),
    ("lr_schedule", "type"): ("constant", "cosine"),
    ("controlnet", "topology"): ("transformer", "unet"),
}


def resolve_section(name: str, values: dict | None) -> dict[str, Any]:
    """``values`` for section ``name`` completed with defaults; unknown, missing or invalid keys raise ``KeyError``."""
    defaults = SECTION_DEFAULTS[name]
    values = dict(values or {})
    unknown = sorted(values.keys() - defaults.keys())
    if unknown:
        raise KeyError(f"unknown key(s) {unknown} in config section '{name}'; known: {sorted(defaults)}")
    resolved = {**defaults, **values}
    missing = sorted(k for k, v in resolved.items() if v is REQUIRED)
    if missing:
        raise KeyError(f"missing required key(s) {missing} in config section '{name}'")
    for (section, key), allowed in ALLOWED_VALUES.items():
        if section == name and resolved[key] not in allowed:
            raise KeyError(f"config key '{name}.{key}' = {resolved[key]!r} is not one of {allowed}")
    return resolved


def check_top_level(cfg: dict) -> None:
    """Reject unknown (names starting with ``_`` are config-file helpers, allowed) or missing top-level keys."""
    unknown = sorted(k for k in cfg if k not in TOP_LEVEL_KEYS and not k.startswith("_"))
    if unknown:
        raise KeyError(f"unknown top-level config key(s) {unknown}; known: {list(TOP_LEVEL_KEYS)}")
    missing = [k for k in REQUIRED_TOP_LEVEL if cfg.get(k) is None]
    if missing:
        raise KeyError(f"missing required top-level config key(s) {missing}")
