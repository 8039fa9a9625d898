"""One training step of a real config, simulated (the memory planner's unit of work, :mod:`diffusion.bench.planner`).

What the trainer builds from a config (``diffusion.build.build_model``, the config's method with its frozen copies,
the EMA shadow when ``train.ema_rate`` is set, the config's optimizer (AdamW with the fused kernel the trainer picks on
CUDA; CAME, which has none, as is), a GradScaler for fp16) is built on fake tensors, the optimizer state is created,
and one optimizer step of ``Trainer.train_step`` runs under the counter of :func:`diffusion.bench.simulate.simulation`
(CUDA rules). Variants of the config:

- ``checkpointing``: the model's ``grad_checkpointing`` flag on or off;
- ``frozen``: ``"config"`` (as written), ``"fp32"`` or ``"bf16"``: the LCM teacher and EMA target
  (``method.teacher_dtype`` / ``target_dtype``), or a ControlNet's frozen base, in that dtype.

Files a config reads (its ``weights`` section: base, teacher, ControlNet, null caption; the LCM method's
``null_caption`` file) are not read: the networks hold random weights of the same shapes (a file null caption becomes
the learned one, a tensor of the same shape). The optimizer state is created by one AdamW step on zero gradients before
the counted step (the state a first real step leaves behind: ``exp_avg``, ``exp_avg_sq``, ``step``; a test checks the
peak equals that of a real second step). With gradient accumulation, two micro-batches are run (the second, which
already holds the first's gradients, is what every further one repeats). The batch is square latents of the model's
``input_size`` (1024 px: 128², the square bucket; every ASPECT_RATIO_1024 bucket holds about 4096 tokens) with 20 of
120 caption tokens valid.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from diffusion.bench.memory import module_tensors, optimizer_tensors
from diffusion.bench.simulate import simulation

AMP = {"bf16": torch.bfloat16, "fp16": torch.float16}
FROZEN = ("config", "fp32", "bf16")


@dataclass(frozen=True)
class Variant:
    checkpointing: bool = True
    frozen: str = "config"

    def describe(self) -> str:
        ckpt = "checkpointing" if self.checkpointing else "no checkpointing"
        return f"{ckpt}, frozen copies {self.frozen}"


def frozen_variants(cfg) -> tuple[str, ...]:
    """The frozen-copy dtypes worth comparing for ``cfg``: ``config`` alone without frozen copies (a teacher run);
    ``fp32`` and ``bf16``, plus ``config`` when it is neither (the LCM config: bf16 teacher, fp32 target)."""
    method = cfg["method"]
    if method["type"] == "LCMDistillation" and not method.get("lora"):
        dtypes = {method.get("teacher_dtype"), method.get("target_dtype")}
        return ("fp32", "bf16") if dtypes in ({None}, {"bf16"}) else FROZEN
    if cfg.get("controlnet") is not None:
        return ("fp32", "bf16")  # the trainer keeps the base as built: fp32 is the config's own
    return ("config",)


def _build(cfg, variant: Variant, batch_size: int, device: str):
    """Model, method, EMA, optimizer, scaler and a batch for ``cfg`` under ``variant`` (inside a simulation)."""
    from diffusion.build import build_method, build_model
    from diffusion.config import resolve_section
    from diffusion.engine.ema import EMA
    from diffusion.engine.optim import FUSED_CAPABLE, build_optimizer

    model_cfg = dict(cfg["model"], grad_checkpointing=variant.checkpointing)
    method_cfg = dict(cfg["method"])
    if method_cfg["type"] == "LCMDistillation":  # weights files: not read (random weights of the same shapes)
        method_cfg.update(null_caption="learned")
    if method_cfg["type"] == "LCMDistillation" and variant.frozen != "config":
        dtype = None if variant.frozen == "fp32" else variant.frozen
        method_cfg.update(teacher_dtype=dtype, target_dtype=dtype)
    unread = ("weights", "load_from", "null_caption")  # every weight source, older keys included: nothing is read
    built = {k: v for k, v in dict(cfg).items() if k not in unread}
    if "controlnet" in built:
        built["controlnet"] = {k: v for k, v in built["controlnet"].items() if k != "load_from"}
    method_cfg.pop("teacher_load_from", None)
    built.update(model=model_cfg, method=method_cfg)
    model = build_model(built, load_weights=False)
    method = build_method(built, model)
    if hasattr(model, "base_model") and variant.frozen != "config":
        model.base_model.to(torch.float32 if variant.frozen == "fp32" else torch.bfloat16)
    model.to(device)
    method.to(device)
    train = resolve_section("train", cfg["train"])
    ema = EMA(model, train["ema_rate"]) if train["ema_rate"] is not None else None
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer_cfg = dict(cfg["optimizer"])
    if optimizer_cfg["type"] in FUSED_CAPABLE:  # AdamW's fused kernel, as the trainer picks on CUDA; CAME has none
        optimizer_cfg["fused"] = True
    optimizer = build_optimizer(params, optimizer_cfg, optimizer_cfg["lr"])
    scaler = torch.amp.GradScaler(torch.device(device).type, enabled=train["mixed_precision"] == "fp16")
    batch = config_batch(getattr(model, "base_model", model), batch_size, device)
    if getattr(model, "accepts_control", False):
        batch["c"] = torch.randn_like(batch["x0"])
    return model, method, ema, optimizer, scaler, batch, train


def config_batch(base: nn.Module, batch_size: int, device: str, valid_tokens: int = 20) -> dict:
    """What the trainer feeds ``base``'s config: latents (B, C, input_size, input_size), captions of
    ``model_max_length`` tokens with ``valid_tokens`` valid, and the micro-conditions of a square image."""
    side, length = base.input_size, base.model_max_length
    mask = torch.zeros(batch_size, length, dtype=torch.long, device=device)
    mask[:, : min(valid_tokens, length)] = 1
    hw = torch.full((batch_size, 2), float(side * 8), device=device)
    return dict(
        x0=torch.randn(batch_size, base.in_channels, side, side, device=device),
        y=torch.randn(batch_size, 1, length, base.caption_channels, device=device),
        y_mask=mask,
        data_info={"img_hw": hw, "aspect_ratio": torch.ones(batch_size, 1, device=device)},
    )


def _units(model: nn.Module) -> tuple[int, int]:
    """Bytes of the largest FSDP unit (a block; the trainer's ``fsdp_wrap_modules`` or ``blocks``) and of the root
    (every parameter outside the units), as stored."""
    units = getattr(model, "fsdp_wrap_modules", None) or list(model.blocks)
    sizes = [sum(p.numel() * p.element_size() for p in unit.parameters()) for unit in units]
    total = sum(p.numel() * p.element_size() for p in model.parameters())
    return max(sizes), total - sum(sizes)


def simulate_config_step(
    cfg, variant: Variant, batch_size: int, worlds: tuple[int, ...] = (2, 8), first_step: bool = False
) -> dict:
    """The simulated peak of one steady-state optimizer step of ``cfg`` at ``batch_size`` per GPU.

    ``first_step``: create the optimizer state with a whole first training step instead of one AdamW step on zero
    gradients (the same state, at twice the cost). Returns ``peak`` (bytes), ``peak_sharded`` {W: per-rank peak
    before FSDP's gather buffers}, ``at_peak`` (bytes by owner at the peak), ``unit`` / ``root`` (bytes of the
    largest FSDP unit and of the root) and ``trained``."""
    with simulation("cuda", "cpu", worlds=worlds) as counter:
        model, method, ema, optimizer, scaler, batch, train = _build(cfg, variant, batch_size, "cpu")
        params = [p for p in model.parameters() if p.requires_grad]
        if first_step:
            _train_step(model, method, ema, optimizer, scaler, batch, train, params)
        else:
            with torch.no_grad():  # the state a first step leaves: exp_avg, exp_avg_sq, step
                for p in params:
                    p.grad = torch.zeros_like(p)
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
        trained = {id(p) for p in params}
        counter.tag([p for p in module_tensors(model) if id(p) not in trained], "frozen")
        counter.tag(module_tensors(*method.frozen_networks()), "frozen")
        counter.tag(params, "weights")
        counter.tag(optimizer_tensors(optimizer), "optimizer")
        if ema is not None:
            counter.tag(ema.shadow.values(), "ema")
        hooks = [p.register_post_accumulate_grad_hook(lambda p: counter.tag([p.grad], "grads")) for p in params]
        counter.reset_peak()
        _train_step(model, method, ema, optimizer, scaler, batch, train, params)
        for hook in hooks:
            hook.remove()
        unit, root = _units(model)
        return dict(
            peak=counter.peak,
            peak_sharded=dict(counter.peak_sharded),
            at_peak={k: v for k, v in counter.peak_by_tag.items() if v},
            unit=unit,
            root=root,
            trained=sum(p.numel() for p in params),
        )


def _train_step(model, method, ema, optimizer, scaler, batch, train, params) -> None:
    """``Trainer.train_step``'s memory-relevant work: autocast forward, scaled backward per micro-batch, unscale,
    clip, step, zero_grad(set_to_none), the method's after-step hook (LCM target EMA), the EMA update."""
    accum = train["grad_accum"]
    amp = AMP.get(train["mixed_precision"])
    model.train()
    for _ in range(min(accum, 2)):
        with torch.autocast("cpu", dtype=amp) if amp else torch.autocast("cpu", enabled=False):
            loss, _ = method(model, batch)
        scaler.scale(loss / accum).backward()
    scaler.unscale_(optimizer)
    torch.nn.utils.clip_grad_norm_(params, train["grad_clip"] or math.inf)
    if scaler.is_enabled():
        scaler.step(optimizer)
        scaler.update()
    else:
        optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    method.after_optimizer_step(model)
    if ema is not None:
        ema.update(model, num_updates=1)
