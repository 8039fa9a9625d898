"""The one way in: a config (and a checkpoint) -> the network, its training method -> a sampling pipeline.

The trainer, every tool (sample, eval_fid, demo, reproduce_*, benchmarks) and the web app build what they run through
these functions, so each kind of checkpoint a run produces (a PixArt-alpha teacher, a full PixArt-delta LCM student,
an LCM-LoRA or w-embedding student, a ControlNet) is taught to exactly one place: :func:`load_model`. The diffusion
process (T, betas, an LCM student's DDIM grid and boundary scalings) is read from the config by
``DiffusionProcess.from_config`` for both the method (:func:`build_method`) and the pipeline (:func:`load_pipeline`),
so a checkpoint is sampled under the process it was trained under. The sampler defaults live in one table,
``diffusion.pipeline.SAMPLER_DEFAULTS``.

    cfg = Config.fromfile("configs/lcm/tiny_lcm.py")
    teacher = load_pipeline(cfg)                                  # cfg.load_from's weights (the teacher)
    student = load_pipeline(cfg, "output/demo/lcm/checkpoints/step_0000300", like=teacher)  # shares T5 and codec
    images = student(["a red circle"], name="lcm", steps=4)      # uint8 (1, 3, H, W)
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping
from pathlib import Path

import torch
from torch import nn

from diffusion.config import resolve_section
from diffusion.data.text_encoder import TextEncoder
from diffusion.methods import Method
from diffusion.model import students
from diffusion.model.io import (
    check_fits,
    key_hints,
    load_model_weights,
    load_state,
    load_state_into,
    resolve_checkpoint,
    set_null_caption,
)
from diffusion.paths import config_path
from diffusion.pipeline import Pipeline
from diffusion.registry import CODECS, METHODS, MODELS, MOVED_KEYS, accepted_keys
from diffusion.schedulers import DiffusionProcess

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def build_model(cfg: Mapping, load_from: bool = True) -> nn.Module:
    """``cfg.model`` as built for training, holding ``cfg.load_from``'s weights when ``load_from`` and the key is set.

    This is what the trainer starts from (the teacher weights of an LCM or ControlNet run). With a ``controlnet``
    section the base is wrapped in the ControlNet of that section (PixArt-delta §4), whose copies start from the loaded
    base blocks, and ``controlnet.load_from`` (when ``load_from``) is then loaded into it.

    ``cfg.null_caption`` (PixArt-Sigma: T5("") from ``tools/make_null_caption.py``) is the model's null caption
    ``y_embedding``: over ``load_from``'s (:func:`diffusion.model.io.with_null_caption`), or written into a model
    trained from scratch (then the file must exist).
    """
    model = MODELS.build(dict(cfg["model"]))
    null_caption = cfg.get("null_caption")
    if load_from and cfg.get("load_from"):
        load_model_weights(model, config_path(cfg["load_from"]), null_caption=null_caption)
    elif load_from and null_caption:
        set_null_caption(model, null_caption)
    if cfg.get("controlnet") is not None:
        from diffusion.model.controlnet import wrap_controlnet

        section = resolve_section("controlnet", cfg["controlnet"])
        model = wrap_controlnet(model, section["topology"], section["copy_blocks"])
        if load_from and section["load_from"]:
            load_controlnet_weights(
                model, config_path(section["load_from"], "controlnet.load_from"), bool(cfg.get("load_from"))
            )
    return model


def build_method(cfg: Mapping, model: nn.Module) -> Method:
    """The training method of ``cfg.method`` over ``model`` (the loaded network it trains, see docs/design.md
    "Methods"), under the config's diffusion process: a method that takes ``schedule`` gets
    ``DiffusionProcess.from_config(cfg).schedule`` (the top-level ``diffusion`` section, with older configs' method
    keys moved in)."""
    method = dict(cfg["method"])
    if "schedule" in method:
        raise KeyError(
            "method.schedule is not a config key: the noise schedule is the top-level section 'diffusion' "
            "(diffusion=dict(num_train_timesteps=..., beta_schedule=..., beta_start=..., beta_end=...))"
        )
    schedule = DiffusionProcess.from_config(cfg).schedule
    for old in MOVED_KEYS["method"]:
        method.pop(old, None)  # read into the schedule above
    cls = METHODS.get(method.get("type"))
    accepted = accepted_keys(cls) if cls is not None else None
    if accepted is None or "schedule" in accepted[0]:  # a method without a noise schedule (a test stand-in) gets none
        method["schedule"] = schedule
    return METHODS.build(dict(method, model=model))


def load_controlnet_weights(
    model: nn.Module, path: str | Path, has_base: bool = True, state: Mapping[str, torch.Tensor] | None = None
) -> None:
    """Load ControlNet weights from ``path`` (or its already-read ``state``) into a ControlNet ``model``.

    Accepted: the official full layout (``base_model.*`` + ``controlnet.*``), a training checkpoint of the trainable
    weights only (``controlnet.*``) or a plain PixArt-alpha file (base filled, copies re-initialised from it). When
    the base already holds the config's ``load_from`` (``has_base``), that stays the base: a full file gives only its
    copies (the controllable LCM puts a ControlNet trained on PixArt-alpha on the LCM student's base), with a warning
    when its own base differs. Without ``has_base`` a copies-only file is an error. Every key must match; a mismatch
    raises ``KeyError`` naming the file, one of another architecture ``ValueError``.
    """
    state = load_state(path) if state is None else state
    full = any(k.startswith("base_model.") for k in state)
    if not has_base and not full and any(k.startswith("controlnet.") for k in state):
        raise ValueError(
            f"{path} holds only the ControlNet's trainable weights; its frozen base comes from the config's "
            "load_from, which is not set"
        )
    if full and has_base:
        _warn_if_base_differs(model, state, path)
        state = {k: v for k, v in state.items() if not k.startswith("base_model.")}
    prefixed = any(k.startswith(("base_model.", "controlnet.")) for k in state)  # else a plain file for the base
    check_fits(model.state_dict(), state if prefixed else {f"base_model.{k}": v for k, v in state.items()}, path)
    try:
        model.load_state_dict(state, strict=True)
    except (RuntimeError, KeyError) as err:
        hints = key_hints(str(err).replace('"', " ").split())
        raise KeyError(
            f"{path}: {err}" + (f" Config keys that likely differ: {'; '.join(hints)}" if hints else "")
        ) from err


def _warn_if_base_differs(model: nn.Module, state: Mapping[str, torch.Tensor], path: str | Path) -> None:
    base = model.base_model.state_dict()
    prefix = "base_model."
    differs = [
        k
        for k, v in state.items()
        if k.startswith(prefix)
        and not k.endswith("pos_embed")
        and (k[len(prefix) :] not in base or not torch.equal(v.to(base[k[len(prefix) :]]), base[k[len(prefix) :]]))
    ]
    if differs:
        warnings.warn(
            f"{path} carries its own base ({len(differs)} tensors differ from the config's load_from, e.g. "
            f"{differs[0]}); the base stays load_from's and only the file's ControlNet copies are loaded",
            stacklevel=3,
        )


def load_teacher_weights(model: nn.Module, path: str | Path) -> None:
    """Load a distillation teacher's weights from ``path`` into ``model`` (a frozen copy of the student).

    For a ControlNet ``model``: a plain PixArt-alpha file fills its base and keeps its copies (the ControlNet trained
    on that teacher, route (b) of the controllable LCM), an official full ControlNet file (``base_model.*``) fills
    both.
    For a plain PixArt: the whole network, any format of :func:`diffusion.model.io.load_state`.
    """
    state = load_state(path := config_path(path, "method.teacher_load_from"))
    if not getattr(model, "accepts_control", False):
        load_state_into(model, state, path)
    elif any(k.startswith("base_model.") for k in state):
        load_controlnet_weights(model, path, state=state)
    else:
        load_state_into(model.base_model, state, path)


def load_model(
    cfg: Mapping,
    checkpoint: str | Path | None = None,
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
    use_ema: bool = True,
) -> nn.Module:
    """The network a run of ``cfg`` produced, ready to sample: eval mode, frozen, on ``device`` in ``dtype``.

    Args:
        cfg: the run's config (``model``, ``load_from``, ``null_caption``: see :func:`build_model`).
        checkpoint: a weights file (``.safetensors`` / official ``.pth``), a diffusers transformer folder or a trainer
            step folder (its ``ema.safetensors`` when ``use_ema`` and present, else ``model.safetensors``). None:
            ``cfg.load_from`` (for an LCM config, that is its teacher). With a ``controlnet`` section: the official
            full ControlNet file, or a training checkpoint of the trainable weights; the base is ``cfg.load_from``
            when set (e.g. an LCM student under a ControlNet trained on its teacher), else the full file's own.
        use_ema: for a trainer step folder, prefer the EMA weights.
    """
    if checkpoint is None:
        if not cfg.get("load_from") and not (cfg.get("controlnet") or {}).get("load_from"):
            raise ValueError("no checkpoint given and the config has no load_from")
        model = build_model(cfg)
    elif cfg.get("controlnet") is not None:
        # the base is cfg.load_from when set (a training checkpoint holds the trainable weights only), else the
        # official full file's own
        path = resolve_checkpoint(checkpoint, use_ema)
        has_base = bool(cfg.get("load_from"))
        model = build_model({**cfg, "controlnet": {**cfg["controlnet"], "load_from": None}}, load_from=has_base)
        load_controlnet_weights(model, path, has_base, load_state(path))
    else:
        model = build_model(cfg, load_from=False)
        path = resolve_checkpoint(checkpoint, use_ema)
        load_state_into(model, _merged_lora(cfg, load_state(path), path), path, null_caption=cfg.get("null_caption"))
    return model.to(device=device, dtype=dtype).eval().requires_grad_(False)


def _merged_lora(cfg: Mapping, state: dict[str, torch.Tensor], path: Path) -> dict[str, torch.Tensor]:
    """An LCM-LoRA checkpoint (peft names) merged into plain weights at the config's ``method.lora`` scale; the
    base of an adapters-only checkpoint is ``cfg.load_from``. Other checkpoints pass through."""
    if not students.has_lora(state):
        return state
    rank, scale = students.lora_scale((cfg.get("method") or {}).get("lora"), str(path))
    base = None
    if students.is_partial_lora(state):
        if not cfg.get("load_from"):
            raise KeyError(f"{path} holds only LoRA adapters; their base weights come from load_from, which is unset")
        base = load_state(config_path(cfg["load_from"]))
    return students.merge_lora(state, rank, scale, base, str(path))


def build_text_encoder(
    cfg: Mapping, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32, int8: bool = False
) -> TextEncoder:
    """The T5 encoder of ``cfg.text_encoder`` (a local folder) on ``device``; ``int8``: weights stored in 8 bits."""
    section = cfg["text_encoder"]
    te = TextEncoder.from_pretrained(
        section["path"],
        max_length=section["max_length"],
        dtype=dtype,
        device=device,
        clean_caption=section.get("clean_caption", True),  # the official T5-embedder caption cleaning
    )
    return te.quantize_8bit() if int8 else te


def build_codec(cfg: Mapping, device: str | torch.device = "cpu") -> nn.Module:
    """The image codec of ``cfg.codec`` (pixel codec or a local ``AutoencoderKL``) on ``device``."""
    codec = CODECS.build(dict(cfg["codec"]))
    return codec.to(device) if hasattr(codec, "to") else codec


def load_pipeline(
    cfg: Mapping,
    checkpoint: str | Path | None = None,
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
    use_ema: bool = True,
    model: nn.Module | None = None,
    like: Pipeline | None = None,
    text_encoder_8bit: bool = False,
    lean: bool = False,
    compile: bool = False,
    cuda_graphs: bool = False,
    process: DiffusionProcess | None = None,
) -> Pipeline:
    """A :class:`Pipeline` over the network of :func:`load_model` (or ``model`` as it is, e.g. the trainer's
    validation copy), the config's text encoder and codec, at ``cfg.data.resolution``, sampling under the config's
    diffusion process (``DiffusionProcess.from_config(cfg)``; also with ``like``). ``process``: another config's
    instead, for a network trained under that one (route (a) of the controllable LCM: the teacher's ControlNet config
    on an LCM student is sampled with the student's LCM settings, ``DiffusionProcess.from_config(student_cfg)``).

    ``like``: reuse that pipeline's text encoder and codec (two models of one config, e.g. teacher and student).
    ``text_encoder_8bit``: T5 weights in int8 (PixArt-delta's 8 GB inference). ``lean``: T5 waits on the CPU
    between calls and the VAE decodes one image at a time, in tiles above its native size. ``compile`` /
    ``cuda_graphs``: regional ``torch.compile`` of the blocks / the whole step under CUDA graphs (:class:`Pipeline`).
    """
    process = DiffusionProcess.from_config(cfg) if process is None else process  # before the weights: fails fast
    if model is None:
        model = load_model(cfg, checkpoint, device, dtype, use_ema)
    if like is not None:
        return like.with_model(model, compile=compile, cuda_graphs=cuda_graphs, process=process)
    text_device = "cpu" if lean else device
    text_encoder = build_text_encoder(cfg, text_device, int8=text_encoder_8bit)
    codec = build_codec(cfg, device)
    if lean and hasattr(codec, "set_lean_decode"):
        codec.set_lean_decode(True)
    return Pipeline(
        model,
        text_encoder,
        codec,
        cfg["data"]["resolution"],
        offload_text_encoder=lean,
        compile=compile,
        cuda_graphs=cuda_graphs,
        process=process,
    )
