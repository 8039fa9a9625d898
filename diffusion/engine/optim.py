"""Optimizer, learning-rate schedule, batch-size scaling of the learning rate (PixArt-α recipe: AdamW, constant lr
with warmup, ``auto_lr`` square-root rule over a base batch of 256; PixArt-δ §3.3 uses AdamW at 2e-5) and the fp16
loss scaler (the official runs train in fp16 on V100s, with accelerate's GradScaler).

``optimizer.type`` is a ``torch.optim`` class or one of :data:`OPTIMIZERS`: ``CAME`` (Luo et al. 2023, the
optimizer of every official PixArt-Σ config, ``betas=(0.9, 0.999, 0.9999), eps=(1e-30, 1e-16), weight_decay=0``)
comes from the ``came-pytorch`` package, as the official code's ``CAMEWrapper`` builds on it.
"""

import importlib
import math
from collections.abc import Iterable

import torch

from diffusion.engine.parallel import is_dtensor

BASE_BATCH_SIZE = 256


def scaled_lr(lr: float, global_batch: int, rule: str | None, base_batch: int = BASE_BATCH_SIZE) -> float:
    """``lr`` scaled to ``global_batch`` images per step: ``'linear'`` ∝ bs, ``'sqrt'`` ∝ √bs, None: unchanged."""
    if rule is None:
        return lr
    ratio = global_batch / base_batch
    return lr * (ratio if rule == "linear" else math.sqrt(ratio))


FUSED_CAPABLE = ("Adam", "AdamW")
# optimizer types beyond torch.optim: name -> "module:attribute" (imported when used)
OPTIMIZERS = {"CAME": "came_pytorch:CAME"}
# optimizer types that cannot step FSDP2's DTensor parameters, and why (measured on 2 gloo ranks, came-pytorch 0.1.3)
NO_DTENSOR = {
    "CAME": (
        "came-pytorch's CAME creates its factored second-moment state (exp_avg_sq_row / _col) as plain tensors of the "
        "full parameter shape, and its first step then fails on FSDP2's DTensor parameters ('aten.add_.Tensor got "
        "mixed torch.Tensor and DTensor'); train a CAME config with train.parallel='ddp', or use AdamW under FSDP"
    )
}


def optimizer_class(name: str) -> type[torch.optim.Optimizer]:
    """The optimizer class of ``optimizer.type`` ``name``: a ``torch.optim`` class or one of :data:`OPTIMIZERS`."""
    if name in OPTIMIZERS:
        module, attribute = OPTIMIZERS[name].split(":")
        try:
            return getattr(importlib.import_module(module), attribute)
        except ImportError as err:
            raise ImportError(f"optimizer.type '{name}' needs the package {module!r} (requirements.txt)") from err
    optimizer_cls = getattr(torch.optim, name, None)
    if not (isinstance(optimizer_cls, type) and issubclass(optimizer_cls, torch.optim.Optimizer)):
        raise KeyError(f"optimizer.type '{name}' is not a torch.optim optimizer nor one of {sorted(OPTIMIZERS)}")
    return optimizer_cls


def build_optimizer(params: Iterable[torch.nn.Parameter], cfg: dict, lr: float) -> torch.optim.Optimizer:
    """``<optimizer class of cfg['type']>(params, lr=lr, **rest_of_cfg)``; the class rejects unknown keys by name.

    Adam/AdamW on CUDA default to the fused kernel (one launch for all parameters, no fp32 temporaries per tensor);
    ``optimizer.fused=False`` in the config turns it off.
    """
    params = list(params)
    kwargs = {k: v for k, v in cfg.items() if k not in ("type", "lr")}
    optimizer_cls = optimizer_class(cfg["type"])
    if cfg["type"] in NO_DTENSOR and any(is_dtensor(p) for p in params):
        raise ValueError(f"optimizer.type '{cfg['type']}' with sharded (FSDP) parameters: {NO_DTENSOR[cfg['type']]}")
    if cfg["type"] in FUSED_CAPABLE and "fused" not in kwargs and params and all(p.is_cuda for p in params):
        kwargs["fused"] = True
    return optimizer_cls(params, lr=lr, **kwargs)


def lr_factor(step: int, kind: str, warmup_steps: int, total_steps: int, min_lr_ratio: float) -> float:
    """Multiplier of the base lr at optimizer step ``step`` (diffusers' warmup schedules, plus a floor for cosine).

    Linear warmup ``step / warmup_steps``, then 1 (``'constant'``) or a half cosine from 1 down to ``min_lr_ratio``.
    """
    if step < warmup_steps:
        return step / max(1, warmup_steps)
    if kind == "constant":
        return 1.0
    progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
    return min_lr_ratio + (1.0 - min_lr_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))


def build_lr_scheduler(
    optimizer: torch.optim.Optimizer, cfg: dict, total_steps: int
) -> torch.optim.lr_scheduler.LambdaLR:
    """LambdaLR over :func:`lr_factor` with the resolved ``lr_schedule`` section ``cfg``."""

    def factor(step: int) -> float:
        return lr_factor(step, cfg["type"], cfg["warmup_steps"], total_steps, cfg["min_lr_ratio"])

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def build_scaler(train_cfg: dict, device: torch.device) -> torch.amp.GradScaler:
    """The GradScaler of a ``train.mixed_precision='fp16'`` run, starting at ``train.loss_scale_init``; a disabled
    one (whose ``step`` is ``optimizer.step``) otherwise."""
    fp16 = train_cfg["mixed_precision"] == "fp16"
    return torch.amp.GradScaler(device.type, init_scale=train_cfg["loss_scale_init"], enabled=fp16)


def scaled_step(scaler: torch.amp.GradScaler, optimizer: torch.optim.Optimizer, finite: bool) -> None:
    """The optimizer step after ``scaler.unscale_(optimizer)``, given whether the gradient norm is ``finite``.

    fp16: a finite norm steps (and after ``growth_interval`` such steps the scale doubles); a non-finite one is an
    overflow: no step, and the scale halves. ``unscale_`` flags inf/NaN gradients itself, over all ranks under FSDP
    too (DTensor reduces found_inf), but not finite gradients whose norm overflows float32: those are flagged here,
    so the scaler and the trainer always agree on whether the step was taken. Without fp16: ``optimizer.step()`` when
    finite.
    """
    if scaler.is_enabled() and not finite:
        for found_inf in scaler._found_inf_per_device(optimizer).values():
            found_inf.fill_(1.0)
    if finite:
        scaler.step(optimizer)
    scaler.update()
