"""The one way in: a config (and a checkpoint) -> the network, its training method -> a sampling pipeline.

The trainer, every tool (sample, eval_fid, demo, reproduce_*, benchmarks) and the web app build what they run through
these functions, so each kind of checkpoint a run produces (a PixArt-alpha teacher, a full PixArt-delta LCM student,
an LCM-LoRA or w-embedding student, a ControlNet) is taught to exactly one place: :func:`load_model`. The weights a
config starts from have names (``weights=dict(base=..., controlnet=..., teacher=..., null_caption=...)``, see
:class:`Weights`), resolved here alone; a tool that wants another network of a config asks for it by name
(:func:`teacher_config`, :func:`without_controlnet`, :func:`with_weights`, :func:`controlnet_on`) instead of
rewriting the config. The diffusion process (T, betas, an LCM student's DDIM grid and boundary scalings) is read from
the config by ``DiffusionProcess.from_config`` for both the method (:func:`build_method`) and the pipeline
(:func:`load_pipeline`), so a checkpoint is sampled under the process it was trained under. The sampler defaults live
in one table, ``diffusion.pipeline.SAMPLER_DEFAULTS``.

    cfg = Config.fromfile("configs/lcm/tiny_lcm.py")
    teacher = load_pipeline(teacher_config(cfg))                  # weights.teacher (the committed tiny teacher)
    student = load_pipeline(cfg, "output/demo/lcm/checkpoints/step_0000300", like=teacher)  # shares T5 and codec
    images = student(["a red circle"], name="lcm", steps=4)      # uint8 (1, 3, H, W)
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path

import torch
from torch import nn

from diffusion.config import WEIGHT_KEYS, resolve_section, weights_section, without_moved_weight_keys
from diffusion.data.text_encoder import TextEncoder
from diffusion.methods import Method, configured_method
from diffusion.methods.base import needs_teacher
from diffusion.model import students
from diffusion.model.controlnet_io import load_controlnet_state
from diffusion.model.controlnet_io import load_teacher_weights as load_teacher_weights  # LCMDistillation's
from diffusion.model.io import describe_state, load_state, load_state_into, resolve_checkpoint, set_null_caption
from diffusion.paths import config_path
from diffusion.pipeline import Pipeline
from diffusion.protocols import LeanDecoder
from diffusion.registry import CODECS, METHODS, MODELS, MOVED_KEYS, accepted_keys
from diffusion.schedulers import DiffusionProcess

Source = str | Path | Mapping[str, torch.Tensor]  # a weights file or folder, or (from code) a state dict
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


@dataclass(frozen=True)
class Weights:
    """A config's weight sources as :func:`weight_sources` resolves them (each a path, a state dict or None).

    base: what ``cfg.model`` holds before training and when sampled without a checkpoint: ``weights.base``, else
        ``weights.teacher`` (a student starts as its teacher, PixArt-delta §3.1). Under a ControlNet, its frozen base;
        under a LoRA, the weights the adapters adapt.
    controlnet: ``weights.controlnet``, loaded into the ControlNet of the ``controlnet`` section over the base.
    teacher: ``weights.teacher``, else the base: what a distilling method guides with, the app's teacher.
    teacher_apart: ``weights.teacher`` and ``weights.base`` are both named, so the method loads the teacher into its
        own copy (route (b) of the controllable LCM: the teacher's base under the student's copies).
    null_caption: ``weights.null_caption``, PixArt-Sigma's T5("") file that is the model's ``y_embedding``.
    """

    base: Source | None
    controlnet: Source | None
    teacher: Source | None
    teacher_apart: bool
    null_caption: str | None

    def files(self, required: bool = True) -> Weights:
        """These sources as the loaders open them: a relative path a config names is found in the current folder,
        else in the checkout (:func:`diffusion.paths.config_path`: ``python /repo/tools/app.py`` from any folder finds
        the committed assets), else a ``FileNotFoundError`` naming the key and both places (``required``; else the path
        stays as written, for callers that may not open it: a student's checkpoint needs no base). A missing null
        caption stays as written: its loader falls back to the checkpoint's ``y_embedding`` with a warning. The
        config's text is not changed, so a config hash stays the same on every machine and in every folder."""

        def find(source, key: str, required: bool = True):
            return str(config_path(source, key, required)) if isinstance(source, (str, Path)) else source

        return replace(
            self,
            base=find(self.base, "weights.base", required),
            controlnet=find(self.controlnet, "weights.controlnet", required),
            teacher=find(self.teacher, "weights.teacher", required),
            null_caption=find(self.null_caption, "weights.null_caption", required=False),
        )


def weight_sources(cfg: Mapping) -> Weights:
    """The resolved :class:`Weights` of ``cfg`` (``cfg.weights``; the keys of older configs, ``load_from``,
    ``controlnet.load_from``, ``method.teacher_load_from`` and ``null_caption``, read at their new names with a
    ``FutureWarning``: ``diffusion.config.weights_section``)."""
    named = weights_section(cfg)
    base, teacher = named["base"], named["teacher"]
    return Weights(
        base=base if base is not None else teacher,
        controlnet=named["controlnet"],
        teacher=teacher if teacher is not None else base,
        teacher_apart=base is not None and teacher is not None,
        null_caption=named["null_caption"],
    )


def with_weights(cfg: Mapping, **sources: Source | None) -> dict:
    """A copy of ``cfg`` (a dict, in the current form) whose weight sources named in ``sources`` are replaced (None:
    unset), e.g. ``with_weights(controlnet_cfg, base=student)``: that ControlNet on an LCM student's base (route (a)).
    An unknown name is a ``KeyError``."""
    unknown = sorted(sources.keys() - WEIGHT_KEYS.keys())
    if unknown:
        raise KeyError(f"unknown weight source(s) {unknown}; known: {list(WEIGHT_KEYS)}")
    current = without_moved_weight_keys(cfg)
    named = {**(current.get("weights") or {}), **sources}
    return {**current, "weights": {k: v for k, v in named.items() if v is not None}}


def teacher_config(cfg: Mapping) -> dict:
    """The config of ``cfg``'s teacher network: ``weights.base`` := the resolved teacher (``weights.teacher``, or the
    base of a config that distils nothing), the student-only w-embedding left out of the model
    (``model.guidance_embedding``), a ControlNet and its ``weights.controlnet`` kept (route (b)'s teacher is its base
    under the same copies). What the app's teacher tab, ``tools/sample.py`` with a teacher's sampler and the
    ControlNet evaluation sample as the teacher."""
    teacher = weight_sources(cfg).teacher
    current = with_weights(cfg, base=teacher, teacher=None)
    current["model"] = {k: v for k, v in cfg["model"].items() if k != "guidance_embedding"}
    return current


def sampled_config(cfg: Mapping, checkpoint: str | Path | None, sampler: str) -> Mapping:
    """The config whose network a sampling tool loads for ``checkpoint`` and the sampler named ``sampler``: ``cfg``
    itself when a checkpoint is given or the method distils nothing; for a distilling config (LCM) without one, its
    teacher (:func:`teacher_config`) under a teacher's sampler, while the LCM sampler is a ``ValueError`` (the config's
    weights are where distillation starts, not the student)."""
    method = configured_method(cfg)
    if checkpoint is not None or not method.requires_teacher:
        return cfg
    if sampler == "lcm":
        raise ValueError(
            f"method {method.__name__} distils a student, so the config's weights ({weight_sources(cfg).teacher}, "
            "weights.teacher) are the teacher distillation starts from, not the student: pass the trained student's "
            "checkpoint, or a teacher's sampler (dpm, ddim) to sample the teacher"
        )
    return teacher_config(cfg)


def without_controlnet(cfg: Mapping) -> dict:
    """The config of the network under ``cfg``'s ControlNet (its base alone, uncontrolled)."""
    return {**with_weights(cfg, controlnet=None), "controlnet": None}


def _controlnet_section(cfg: Mapping) -> dict | None:
    section = cfg.get("controlnet")
    if section is None:
        return None
    return resolve_section("controlnet", {k: v for k, v in section.items() if k != "load_from"})  # moved: weights


def _read(source: Source, name: str) -> tuple[dict[str, torch.Tensor], str]:
    """(state dict, the name errors give it) of a weight source ``name`` (e.g. ``weights.base``)."""
    if isinstance(source, Mapping):
        return dict(source), f"{name} (a state dict)"
    return load_state(source), str(source)


def build_model(cfg: Mapping, load_weights: bool = True) -> nn.Module:
    """``cfg.model`` as built for training, holding the resolved ``weights.base`` when ``load_weights`` (see
    :class:`Weights`; an LCM config's is its teacher).

    With a ``controlnet`` section the base is wrapped in the ControlNet of that section (PixArt-delta §4), whose copies
    start from the loaded base blocks, and ``weights.controlnet`` (when ``load_weights``) is then loaded into it: the
    official full file (with a ``weights.base`` its copies only), or a trainer checkpoint of the copies, which needs
    ``weights.base``. ``weights.null_caption`` (PixArt-Sigma: T5("") from ``tools/make_null_caption.py``) is the
    model's ``y_embedding``: over the base's (:func:`diffusion.model.io.with_null_caption`), or written into a model
    trained from scratch (then the file must exist).
    """
    weights = weight_sources(cfg).files() if load_weights else weight_sources(cfg)
    model = MODELS.build(dict(cfg["model"]))
    if load_weights and weights.base is not None:
        state, name = _read(weights.base, "weights.base")
        load_state_into(model, state, name, null_caption=weights.null_caption)
    elif load_weights and weights.null_caption:
        set_null_caption(model, weights.null_caption)
    section = _controlnet_section(cfg)
    if section is not None:
        from diffusion.model.controlnet import wrap_controlnet

        model = wrap_controlnet(model, section["topology"], section["copy_blocks"])
        if load_weights and weights.controlnet is not None:
            state, name = _read(weights.controlnet, "weights.controlnet")
            _load_controlnet(model, state, name, weights, what="weights.controlnet")
    return model


def _load_controlnet(model: nn.Module, state: dict, name: str, weights: Weights, what: str) -> None:
    """A ControlNet file of the config (``what``: ``weights.controlnet`` or a checkpoint) over the base
    ``weights.base`` when it is named; the copies alone need it."""
    kind = describe_state(state)
    if what == "weights.controlnet" and kind == "PixArt weights":
        raise ValueError(f"weights.controlnet {name} holds {kind}, no ControlNet: name a PixArt file weights.base")
    if weights.base is None and kind.startswith("a ControlNet's trainable weights"):
        raise ValueError(
            f"{name} holds only the ControlNet's trainable weights; its frozen base is the config's weights.base, "
            "which is not set"
        )
    load_controlnet_state(model, state, name, keep_base=weights.base is not None, null_caption=weights.null_caption)


def build_method(cfg: Mapping, model: nn.Module) -> Method:
    """The training method of ``cfg.method`` over ``model`` (the loaded network it trains, see docs/design.md
    "Methods"), under the config's diffusion process: a method that takes ``schedule`` gets
    ``DiffusionProcess.from_config(cfg).schedule`` (the top-level ``diffusion`` section, with older configs' method
    keys moved in), and a distilling one the config's ``weights.teacher`` when it is named apart from the base
    (``teacher_weights``; else its teacher is ``model`` as loaded)."""
    method = {k: v for k, v in cfg["method"].items() if k != "teacher_load_from"}  # moved: weights.teacher
    for key, hint in (
        ("schedule", "the top-level section 'diffusion' (diffusion=dict(num_train_timesteps=..., beta_schedule=...))"),
        ("teacher_weights", "the config key weights.teacher"),
    ):
        if key in method:
            raise KeyError(f"method.{key} is not a config key: it is {hint}")
    schedule = DiffusionProcess.from_config(cfg).schedule
    weights = weight_sources(cfg)
    for old in MOVED_KEYS["method"]:
        method.pop(old, None)  # read into the schedule above
    cls = METHODS.get(method.get("type"))
    accepted = accepted_keys(cls) if cls is not None else None
    if accepted is None or "schedule" in accepted[0]:  # a method without a noise schedule (a test stand-in) gets none
        method["schedule"] = schedule
    if weights.teacher_apart:
        if not needs_teacher(cls):
            raise KeyError(f"weights.teacher is set but method {method.get('type')} distils no teacher")
        method["teacher_weights"] = weights.files().teacher
    return METHODS.build(dict(method, model=model))


def load_model(
    cfg: Mapping,
    checkpoint: str | Path | None = None,
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
    use_ema: bool = True,
) -> nn.Module:
    """The network a run of ``cfg`` produced, ready to sample: eval mode, frozen, on ``device`` in ``dtype``.

    Args:
        cfg: the run's config (``model``, ``weights``, ``controlnet``: see :func:`build_model`).
        checkpoint: a weights file (``.safetensors`` / official ``.pth``), a diffusers transformer folder or a trainer
            step folder (its ``ema.safetensors`` when ``use_ema`` and present, else ``model.safetensors``). None: the
            config's own weights (``weights.base`` [+ ``weights.controlnet``]); for an LCM config that is the teacher
            the student starts from, which is why the tools ask for a student's checkpoint. With a ``controlnet``
            section: the official full file, or a training checkpoint of the trainable weights; the base is
            ``weights.base`` when set (e.g. an LCM student under a ControlNet trained on its teacher), else the full
            file's own. An LCM-LoRA checkpoint (peft names) is merged at ``method.lora``'s scale, an adapters-only one
            into ``weights.base``.
        use_ema: for a trainer step folder, prefer the EMA weights.
    """
    weights = weight_sources(cfg).files(required=checkpoint is None)  # a checkpoint may need none of them
    if checkpoint is None:
        if weights.base is None and weights.controlnet is None:
            raise ValueError("no checkpoint given and the config names no weights (weights.base / weights.teacher)")
        model = build_model(cfg)
    elif _controlnet_section(cfg) is not None:
        path = resolve_checkpoint(checkpoint, use_ema)
        model = build_model(with_weights(cfg, controlnet=None), load_weights=weights.base is not None)
        _load_controlnet(model, load_state(path), str(path), weights, what="checkpoint")
    else:
        model = build_model(cfg, load_weights=False)
        path = resolve_checkpoint(checkpoint, use_ema)
        state = _merged_lora(cfg, load_state(path), path, weights.base)
        load_state_into(model, state, path, null_caption=weights.null_caption)
    return model.to(device=device, dtype=dtype).eval().requires_grad_(False)


def controlnet_on(
    cfg: Mapping,
    base: nn.Module,
    checkpoint: str | Path | None = None,
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
    use_ema: bool = True,
) -> nn.Module:
    """The ControlNet of ``cfg`` (its ``controlnet`` section) around a copy of the network ``base``, its architecture
    and weights as they are (e.g. the LCM student the app serves, whichever kind of checkpoint it came from: full,
    LoRA merged, w-embedding), with the copies from ``checkpoint`` (or ``weights.controlnet``): an official full file
    gives only its copies (the base stays ``base``'s), a trainer checkpoint its copies. Ready to sample as
    :func:`load_model`'s."""
    section = _controlnet_section(cfg)
    if section is None:
        raise KeyError("controlnet_on: the config has no controlnet section")
    source = (
        resolve_checkpoint(checkpoint, use_ema) if checkpoint is not None else weight_sources(cfg).files().controlnet
    )
    if source is None:
        raise ValueError("controlnet_on: no checkpoint given and the config has no weights.controlnet")
    from diffusion.model.controlnet import wrap_controlnet

    model = wrap_controlnet(copy.deepcopy(base).float(), section["topology"], section["copy_blocks"])
    state, name = _read(source, "weights.controlnet")
    if describe_state(state) == "PixArt weights":
        raise ValueError(f"{name} holds PixArt weights and no trained ControlNet weights: pass a ControlNet file")
    load_controlnet_state(model, state, name, keep_base=True)
    return model.to(device=device, dtype=dtype).eval().requires_grad_(False)


def _merged_lora(cfg: Mapping, state: dict[str, torch.Tensor], path: Path, base: Source | None) -> dict:
    """An LCM-LoRA checkpoint (peft names) merged into plain weights at the config's ``method.lora`` scale; the
    base of an adapters-only checkpoint is ``base`` (the config's ``weights.base``). Other checkpoints pass through."""
    if not students.has_lora(state):
        return state
    rank, scale = students.lora_scale((cfg.get("method") or {}).get("lora"), str(path))
    base_state = None
    if students.is_partial_lora(state):
        if base is None:
            raise KeyError(
                f"{path} holds only LoRA adapters; their base weights are the config's weights.base (or "
                "weights.teacher, the student's start), which is unset"
            )
        base_state, _ = _read(base, "weights.base")
    return students.merge_lora(state, rank, scale, base_state, str(path))


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
    if lean and isinstance(codec, LeanDecoder):
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
