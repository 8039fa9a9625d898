"""Export a PixArt model as a complete diffusers ``PixArtAlphaPipeline`` / ``PixArtSigmaPipeline`` folder (a
PixArt-delta §3 LCM student, or a PixArt-alpha / Sigma teacher), loadable offline with
``PixArtAlphaPipeline.from_pretrained(out_dir)`` (``PixArtSigmaPipeline`` for a Σ model).

Layout written (what ``from_pretrained`` reads, facts §3.5 / §6.3):

    model_index.json
    transformer/   config.json + diffusion_pytorch_model.safetensors (+ y_embedding.safetensors, the learned null
                   caption diffusers has no slot for; see diffusion/model/diffusers_format.py)
    scheduler/     LCMScheduler or DPMSolverMultistepScheduler (DPM-Solver++(2M), the PixArt-alpha default), both on
                   the model's diffusion process (``process``: DiffusionProcess.from_config of its config; PixArt's
                   linear betas 1e-4 -> 0.02 over 1000 steps, timestep_scaling 10 and 50 original steps by default)
    text_encoder/  the T5 encoder files, copied from a local directory
    tokenizer/     its tokenizer, re-saved
    vae/           the AutoencoderKL files, copied from a local directory

diffusers' ``LCMScheduler`` spaces ``num_inference_steps`` evenly over the 50 distillation timesteps
(4 -> [999, 759, 499, 259]); the official PixArt-LCM schedule differs (4 -> [999, 759, 519, 279]) and can only be
requested through ``pipe(..., timesteps=...)``. The timesteps for 1..8 steps of the chosen schedule are written to
``scheduler/lcm_timesteps.json`` so users can pass them (see :func:`lcm_timesteps`).

Sampling the exported folder reproduces our ``Pipeline`` (tests/tools/test_export.py) with ``guidance_scale=0``,
``use_resolution_binning=False``, ``clean_caption=False`` and ``max_sequence_length`` = our caption length (120 for
the real model). Differences to keep in mind: diffusers lower-cases prompts, and its CFG null is T5("") under its own
mask rather than ``y_embedding`` under the prompt's mask (pass ``negative_prompt_embeds`` = ``y_embedding`` and
``negative_prompt_attention_mask`` = the prompt's mask to get ours).

PixArt-Sigma: ``PixArtSigmaPipeline`` never passes micro-conditions (the transformer is written with
``use_additional_conditions: false``), tokenizes to ``max_sequence_length`` 300 by default and bins resolutions with
the 256 / 512 / 1024 / 2048 tables; a KV-compressed or qk-norm model cannot be exported (see
``diffusion/model/diffusers_format.py``).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from torch import nn

from diffusion.model.diffusers_format import diffusers_config, save_diffusers
from diffusion.schedulers import LCM_SPACINGS, DiffusionProcess, NoiseSchedule

SCHEDULER_CHOICES = ("lcm", "dpm")
PIPELINES = ("PixArtAlphaPipeline", "PixArtSigmaPipeline")
SIGMA_MAX_LENGTH = 300
LCM_SCHEDULES = LCM_SPACINGS
LCM_TIMESTEPS_FILE = "lcm_timesteps.json"
# Files of a Hugging Face T5 directory that belong to the model (the rest is the tokenizer's).
_MODEL_FILE_SUFFIXES = (".safetensors", ".bin", ".safetensors.index.json", ".bin.index.json")
_MODEL_FILE_NAMES = ("config.json", "generation_config.json")
_SCHEDULER_CONFIG = "scheduler_config.json"


def diffusers_betas(schedule: NoiseSchedule) -> dict:
    """The beta keys of a diffusers scheduler config giving ``schedule``'s betas. diffusers' "linear" is
    ``linspace(beta_start, beta_end, T)`` without IDDPM's ``1000 / T`` rescale, so the ends are written rescaled;
    explicit betas are written as ``trained_betas``."""
    if schedule.beta_schedule is None:
        return {"beta_schedule": "linear", "trained_betas": schedule.betas.tolist()}
    scale = 1000.0 / schedule.num_train_timesteps if schedule.beta_schedule == "linear" else 1.0
    return {
        "beta_schedule": schedule.beta_schedule,
        "beta_start": schedule.beta_start * scale,
        "beta_end": schedule.beta_end * scale,
    }


def lcm_scheduler_config(process: DiffusionProcess | None = None) -> dict:
    """``scheduler_config.json`` of a diffusers ``LCMScheduler`` that samples like our LCM sampler under ``process``
    (None: PixArt-alpha's schedule, PixArt-delta's LCM settings; not diffusers' Stable Diffusion defaults). diffusers
    fixes sigma_data = 0.5, so a student distilled with another one cannot be exported (``ValueError``)."""
    process = DiffusionProcess() if process is None else process
    if process.lcm.sigma_data != 0.5:
        raise ValueError(
            f"method.sigma_data = {process.lcm.sigma_data}: diffusers' LCMScheduler fixes sigma_data = 0.5, so this "
            "student's consistency function cannot be exported to it"
        )
    return {
        "_class_name": "LCMScheduler",
        "num_train_timesteps": process.schedule.num_train_timesteps,
        **diffusers_betas(process.schedule),
        "original_inference_steps": process.lcm.num_ddim_steps,
        "timestep_scaling": process.lcm.timestep_scaling,
        "prediction_type": "epsilon",
        "clip_sample": False,
        "set_alpha_to_one": True,
        "thresholding": False,
        "rescale_betas_zero_snr": False,
    }


def dpm_scheduler_config(process: DiffusionProcess | None = None) -> dict:
    """``scheduler_config.json`` of the PixArt-alpha teacher's DPM-Solver++(2M) (diffusers' hub config) on
    ``process``'s schedule (None: PixArt-alpha's)."""
    process = DiffusionProcess() if process is None else process
    return {
        "_class_name": "DPMSolverMultistepScheduler",
        "num_train_timesteps": process.schedule.num_train_timesteps,
        **diffusers_betas(process.schedule),
        "algorithm_type": "dpmsolver++",
        "solver_order": 2,
        "solver_type": "midpoint",
        "prediction_type": "epsilon",
        "lower_order_final": True,
        "timestep_spacing": "linspace",
        "final_sigmas_type": "zero",
        "variance_type": None,
    }


def lcm_timesteps(num_steps: int, schedule: str = "pixart", process: DiffusionProcess | None = None) -> list[int]:
    """Descending LCM timesteps for ``num_steps`` under ``schedule`` ("pixart" official or "diffusers" spacing) on
    ``process``'s DDIM grid (None: 50 of 1000 steps)."""
    process = DiffusionProcess() if process is None else process
    return process.lcm_scheduler(schedule).set_timesteps(num_steps).tolist()


def export_pipeline(
    model: nn.Module,
    out_dir: str | Path,
    text_encoder_dir: str | Path,
    vae_dir: str | Path,
    scheduler: str = "lcm",
    lcm_timesteps_schedule: str = "pixart",
    max_length: int | None = None,
    scaling_factor: float | None = None,
    process: DiffusionProcess | None = None,
    pipeline: str | None = None,
) -> Path:
    """Write ``model`` and its companions as a diffusers ``PixArtAlphaPipeline`` / ``PixArtSigmaPipeline`` folder.

    Args:
        model: our ``PixArt`` / ``PixArtMS``. ``PixArtAlphaPipeline`` passes micro-conditions exactly when the
            transformer's ``sample_size`` is 128, so a model with micro-conditions must have ``input_size`` 128;
            ``PixArtSigmaPipeline`` never passes them, so its model must have none.
        out_dir: the folder to create (an existing folder is overwritten file by file).
        text_encoder_dir: a local T5 encoder directory (``T5EncoderModel`` + tokenizer files, what ``TextEncoder``
            loads).
        vae_dir: a local diffusers ``AutoencoderKL`` directory.
        scheduler: "lcm" (a distilled student) or "dpm" (a teacher).
        lcm_timesteps_schedule: "pixart" or "diffusers"; which schedule ``scheduler/lcm_timesteps.json`` lists.
        max_length: the caption length the model was trained with (stored as the tokenizer's ``model_max_length``;
            pass the same value as ``max_sequence_length`` to the pipeline). Defaults to ``model.model_max_length``.
        scaling_factor: if given, overrides the VAE config's ``scaling_factor`` (must equal the codec's).
        process: the diffusion process the model was trained under (``DiffusionProcess.from_config(cfg)``), written
            into the scheduler config; None: PixArt-alpha's schedule and PixArt-delta's LCM settings.
        pipeline: one of :data:`PIPELINES`; None: ``PixArtSigmaPipeline`` for a PixArt-Sigma model (no
            micro-conditions and 300-token captions), else ``PixArtAlphaPipeline``.
    Returns: ``out_dir`` as a Path.
    """
    from transformers import AutoTokenizer

    if scheduler not in SCHEDULER_CHOICES:
        raise ValueError(f"unknown scheduler {scheduler!r}; expected one of {SCHEDULER_CHOICES}")
    if lcm_timesteps_schedule not in LCM_SCHEDULES:
        raise ValueError(f"unknown LCM schedule {lcm_timesteps_schedule!r}; expected one of {LCM_SCHEDULES}")
    process = DiffusionProcess() if process is None else process
    scheduler_config = lcm_scheduler_config(process) if scheduler == "lcm" else dpm_scheduler_config(process)
    pipeline = pipeline or default_pipeline(model)
    if pipeline not in PIPELINES:
        raise ValueError(f"unknown pipeline {pipeline!r}; expected one of {PIPELINES}")
    micro = bool(model.use_micro_conditions)
    if pipeline == "PixArtSigmaPipeline" and micro:
        raise ValueError(
            f"{type(model).__name__} has micro-conditions (size / aspect-ratio embedders) and PixArtSigmaPipeline "
            "never passes them: export it as a PixArtAlphaPipeline, or build the model with micro_condition=False"
        )
    if pipeline == "PixArtAlphaPipeline" and micro and model.input_size != 128:
        raise ValueError(
            f"{type(model).__name__} with input_size {model.input_size}: PixArtAlphaPipeline feeds micro-conditions "
            "iff sample_size == 128, so a model with micro-conditions can only be exported at 128 (1024 px)"
        )
    diffusers_config(model)  # a KV-compressed / qk-norm model is refused before anything is written
    text_encoder_dir, vae_dir, out_dir = Path(text_encoder_dir), Path(vae_dir), Path(out_dir)
    for directory in (text_encoder_dir, vae_dir):
        if not (directory / "config.json").is_file():
            raise FileNotFoundError(f"{directory / 'config.json'} not found")
    out_dir.mkdir(parents=True, exist_ok=True)

    save_diffusers(model, out_dir / "transformer")
    tokenizer = AutoTokenizer.from_pretrained(str(text_encoder_dir), local_files_only=True)
    tokenizer.model_max_length = max_length or model.model_max_length
    tokenizer.save_pretrained(str(out_dir / "tokenizer"))
    _copy_files(text_encoder_dir, out_dir / "text_encoder", _is_model_file)
    _copy_files(vae_dir, out_dir / "vae", lambda p: True)
    if scaling_factor is not None:
        vae_config = json.loads((out_dir / "vae" / "config.json").read_text())
        vae_config["scaling_factor"] = scaling_factor
        (out_dir / "vae" / "config.json").write_text(json.dumps(vae_config, indent=2))
    _write_scheduler(out_dir / "scheduler", scheduler_config, lcm_timesteps_schedule, process)

    import diffusers

    model_index = {
        "_class_name": pipeline,
        "_diffusers_version": diffusers.__version__,
        "scheduler": ["diffusers", "LCMScheduler" if scheduler == "lcm" else "DPMSolverMultistepScheduler"],
        "text_encoder": ["transformers", "T5EncoderModel"],
        "tokenizer": ["transformers", type(tokenizer).__name__],
        "transformer": ["diffusers", "PixArtTransformer2DModel"],
        "vae": ["diffusers", "AutoencoderKL"],
    }
    (out_dir / "model_index.json").write_text(json.dumps(model_index, indent=2))
    return out_dir


def default_pipeline(model: nn.Module) -> str:
    """``PixArtSigmaPipeline`` for a PixArt-Sigma model (no micro-conditions, 300-token captions), else
    ``PixArtAlphaPipeline``."""
    sigma = not model.use_micro_conditions and model.model_max_length == SIGMA_MAX_LENGTH
    return "PixArtSigmaPipeline" if sigma else "PixArtAlphaPipeline"


def _write_scheduler(directory: Path, config: dict, schedule: str, process: DiffusionProcess) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / _SCHEDULER_CONFIG).write_text(json.dumps(config, indent=2))
    if config["_class_name"] == "LCMScheduler":
        steps = {str(n): lcm_timesteps(n, schedule, process) for n in range(1, min(8, process.lcm.num_ddim_steps) + 1)}
        (directory / LCM_TIMESTEPS_FILE).write_text(json.dumps({"schedule": schedule, "timesteps": steps}, indent=2))


def _is_model_file(path: Path) -> bool:
    return path.name in _MODEL_FILE_NAMES or path.name.endswith(_MODEL_FILE_SUFFIXES)


def _copy_files(src: Path, dst: Path, keep) -> None:
    """Copy the top-level files of ``src`` accepted by ``keep`` into ``dst``."""
    dst.mkdir(parents=True, exist_ok=True)
    for path in sorted(src.iterdir()):
        if path.is_file() and keep(path):
            shutil.copy2(path, dst / path.name)
