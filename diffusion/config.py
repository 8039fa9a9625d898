"""The config schema: which top-level keys and sub-keys a run's config has, their defaults and allowed values.

Shared by the trainer (``diffusion.engine``) and the one way in (``diffusion.build``), so it sits above both.

An unknown or missing key is an error that names it (the official PixArt configs carry keys nothing reads, e.g.
``w_min``/``w_max`` in the LCM recipe of PixArt-δ §3.3; here such a key fails loudly).
"""

import inspect
import warnings
from collections.abc import Mapping
from typing import Any

REQUIRED = object()

TOP_LEVEL_KEYS = (
    "model",
    "weights",  # the named weight sources (WEIGHT_KEYS), resolved by diffusion.build.weight_sources
    "load_from",  # older configs: now weights.base (MOVED_WEIGHT_KEYS), read with a FutureWarning
    "null_caption",  # older configs: now weights.null_caption
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
    "diffusion",  # the noise schedule (diffusion.schedulers.DiffusionProcess.from_config checks its keys)
    "encoding",  # on-the-fly encoding of a dataset that yields images (ShardDataset): diffusion.engine.data_source
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
        # fp16 only (train.mixed_precision='fp16', the official V100 setting): the GradScaler's first loss scale
        # (2^16, torch's and accelerate's default) and its floor: a scale below it means the gradients overflow even
        # barely scaled, and the run stops (torch's GradScaler doc: "if the scale falls below 1 ... something is
        # likely wrong"; DeepSpeed's min_loss_scale is 1 too). A checkpoint's scale replaces loss_scale_init on resume.
        loss_scale_init=2.0**16,
        loss_scale_min=1.0,
    ),
    "lr_schedule": dict(type="constant", warmup_steps=0, min_lr_ratio=0.0),
    "checkpoint": dict(every=1000, keep_last=2),
    "log": dict(every=10, wandb_project="pixart-delta", wandb_name=None),
    # control (ControlNet runs): None, "embedded" (the embedded default's exact edges of each prompt) or image paths
    # (one per prompt, or one for all), turned into control maps by annotator ("image": as they are; "canny"; "hed"
    # with hed_path)
    "validation": dict(
        every=500, prompts=REQUIRED, seed=0, sampler=None, control=None, annotator="image", hed_path=None
    ),
    # PixArt-delta §4: wrap cfg.model (holding weights.base) in a ControlNet of copy_blocks trainable copies; its
    # weights are weights.controlnet. copy_blocks None: depth // 2 for "unet".
    "controlnet": dict(copy_blocks=13, topology="transformer"),
    # diffusion.build.build_text_encoder reads these; the caption cache's meta.json must agree (preflight)
    "text_encoder": dict(path=REQUIRED, max_length=120, clean_caption=True),
    # A dataset that yields images and captions (ShardDataset) is encoded in the training step by the config's codec
    # and text_encoder (diffusion/engine/data_source.py). dtype: the frozen T5's and VAE's weights, "auto" = bf16 on a
    # GPU with native bf16, else fp32. annotator: a ControlNet's control is the image's HED / Canny map (hed_path,
    # canny_*), made on the fly; None = the shard's control image (data.load_control=True). shard_text_encoder: T5
    # sharded block by block on the model's FSDP mesh; None = whenever train.parallel='fsdp'.
    "encoding": dict(
        dtype="auto",
        annotator=None,
        hed_path=None,
        canny_low=100,
        canny_high=200,
        canny_l2_gradient=False,
        shard_text_encoder=None,
    ),
}

ALLOWED_VALUES: dict[tuple[str, str], tuple] = {
    ("train", "mixed_precision"): ("no", "bf16", "fp16"),
    ("train", "parallel"): ("ddp", "fsdp"),
    ("train", "auto_lr"): (None, "sqrt", "linear"),
    ("lr_schedule", "type"): ("constant", "cosine"),
    ("controlnet", "topology"): ("transformer", "unet"),
    ("validation", "annotator"): ("image", "canny", "hed"),
    ("encoding", "dtype"): ("auto", "fp32", "bf16"),
    ("encoding", "annotator"): (None, "canny", "hed"),
    ("encoding", "shard_text_encoder"): (None, True, False),
}


# numeric keys with a range: (section, key) -> (test, what the value must be)
VALUE_RANGES: dict[tuple[str, str], tuple[Any, str]] = {
    ("train", "loss_scale_init"): (lambda v: v > 0, "> 0"),
    ("train", "loss_scale_min"): (lambda v: v >= 0, ">= 0"),
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
    for (section, key), (valid, what) in VALUE_RANGES.items():
        if section == name and not valid(resolved[key]):
            raise KeyError(f"config key '{name}.{key}' = {resolved[key]!r} must be {what}")
    return resolved


def check_top_level(cfg: dict) -> None:
    """Reject unknown (names starting with ``_`` are config-file helpers, allowed) or missing top-level keys."""
    unknown = sorted(k for k in cfg if k not in TOP_LEVEL_KEYS and not k.startswith("_"))
    if unknown:
        raise KeyError(f"unknown top-level config key(s) {unknown}; known: {list(TOP_LEVEL_KEYS)}")
    missing = [k for k in REQUIRED_TOP_LEVEL if cfg.get(k) is None]
    if missing:
        raise KeyError(f"missing required top-level config key(s) {missing}")


def check_codec(values: dict) -> dict[str, Any]:
    """The ``codec`` section checked against its class: ``type`` must be a registered codec and every other key an
    argument of that class's constructor (a misspelt ``scale_factr`` or ``pth`` fails here, before step 1)."""
    from diffusion.registry import CODECS

    values = dict(values or {})
    if "type" not in values:
        raise KeyError("missing required key(s) ['type'] in config section 'codec'")
    codec_cls = CODECS.get(values["type"])
    if codec_cls is None:
        raise KeyError(
            f"config key 'codec.type' = {values['type']!r} is not a registered codec: {sorted(CODECS.module_dict)}"
        )
    params = inspect.signature(codec_cls.__init__).parameters
    if any(p.kind is p.VAR_KEYWORD for p in params.values()):
        return values
    known = sorted(k for k in params if k != "self")
    unknown = sorted(values.keys() - {"type", *known})
    if unknown:
        raise KeyError(f"unknown key(s) {unknown} in config section 'codec' ({values['type']}); known: {known}")
    missing = sorted(
        k for k, p in params.items() if k != "self" and p.default is p.empty and p.kind is p.POSITIONAL_OR_KEYWORD
    )
    missing = [k for k in missing if k not in values]
    if missing:
        raise KeyError(f"missing required key(s) {missing} in config section 'codec' ({values['type']})")
    return values


# The weight sources a config names, each with its own key of the top-level section ``weights`` (docs/design.md,
# "Building"; diffusion.build.weight_sources resolves them):
WEIGHT_KEYS = {
    "base": "the network's own weights: what cfg.model starts from (a ControlNet's frozen base, a LoRA's base)",
    "controlnet": "a ControlNet's weights: the official full file or a trainer checkpoint of its copies",
    "teacher": "a distilling method's teacher (unset: weights.base; a student starts as its teacher)",
    "null_caption": "PixArt-Sigma: a T5('') file (tools/make_null_caption.py) that is the model's y_embedding",
}
# Where older configs named them (one key, three meanings: the teacher of an LCM config, the base of a ControlNet,
# the student's base of a LoRA): old dotted key -> its key in ``weights``.
MOVED_WEIGHT_KEYS = {
    "load_from": "base",
    "controlnet.load_from": "controlnet",
    "method.teacher_load_from": "teacher",
    "null_caption": "null_caption",
}


def weights_section(cfg: Mapping) -> dict[str, Any]:
    """``cfg.weights`` (every key of :data:`WEIGHT_KEYS`, None when unset) with the keys of older configs moved in.

    Each old key set (:data:`MOVED_WEIGHT_KEYS`; a None value counts as unset) is read at its new key with a
    ``FutureWarning`` naming both; an old and a new key set to different values is a ``ValueError`` naming both; an
    unknown key of ``weights`` is a ``KeyError`` listing the known ones.
    """
    named = dict(cfg.get("weights") or {})
    unknown = sorted(named.keys() - WEIGHT_KEYS.keys())
    if unknown:
        raise KeyError(f"unknown key(s) {unknown} in config section 'weights'; known: {list(WEIGHT_KEYS)}")
    section = {key: named.get(key) for key in WEIGHT_KEYS}
    for old, new in MOVED_WEIGHT_KEYS.items():
        value = _dotted(cfg, old)
        if value is None:
            continue
        if section[new] is not None and section[new] != value:
            raise ValueError(
                f"config keys {old} = {value!r} and weights.{new} = {section[new]!r} disagree: {old} is the older "
                f"name of weights.{new}; set weights.{new} only"
            )
        warnings.warn(
            f"config key {old} is now weights.{new} ({WEIGHT_KEYS[new]}); read as such",
            FutureWarning,
            stacklevel=2,
        )
        section[new] = value
    return section


def without_moved_weight_keys(cfg: Mapping) -> dict[str, Any]:
    """A copy of ``cfg`` (top level and the sections it changes) in the current form: ``weights`` holds every weight
    source (:func:`weights_section`, unset ones left out) and no old key of :data:`MOVED_WEIGHT_KEYS` remains."""
    section = {k: v for k, v in weights_section(cfg).items() if v is not None}
    out = {k: v for k, v in cfg.items() if k not in ("load_from", "null_caption", "weights")}
    for old in MOVED_WEIGHT_KEYS:
        if "." in old:
            parent, key = old.split(".")
            if isinstance(out.get(parent), Mapping) and key in out[parent]:
                out[parent] = {k: v for k, v in out[parent].items() if k != key}
    if section:
        out["weights"] = section
    return out


def _dotted(cfg: Mapping, key: str) -> Any:
    """``cfg``'s value at the dotted ``key`` (one level of nesting), None when absent (cfg: a dict or a Config)."""
    parent, _, leaf = key.rpartition(".")
    if not parent:
        return cfg.get(leaf)
    holder = cfg.get(parent)
    return holder.get(leaf) if isinstance(holder, Mapping) else None
