"""Latent consistency distillation of PixArt-alpha into PixArt-delta (arXiv 2401.05252 §3.1, Algorithm 1).

Three networks: the frozen teacher (the loaded PixArt-alpha weights), the student f_theta being trained (the model the
trainer optimises, initialised from the same weights) and the target f_theta^- (an EMA of the student, mu = 0.95,
updated only after a real optimizer step). Per step:

1. sample n and z_{t_{n+k}} ~ q(z_t | z) on the 50-step DDIM grid (k = 20 of 1000);
2. one classifier-free-guided DDIM step of the teacher from t_{n+k} to t_n with a fixed w (PixArt-delta: no
   w-embedding; the unconditional branch is the learned null caption with the prompt's own mask, as the official code);
3. loss d(f_theta(z_{t_{n+k}}, t_{n+k}), f_theta^-(z_hat_{t_n}, t_n)), Huber with c = 0.001 (or L2).

Variants the paper compares: sampled w in [w_min, w_max] (optionally fed to a w-embedding of the student, LCM's
default), and LCM-LoRA (a ``peft`` LoRA on the student; the target is the student itself, as the official LoRA script).
The target is a strategy object (``diffusion.methods.lcm_targets``: an EMA copy, or the student under stop-gradient).

The schedule (T, betas) is the config's ``diffusion`` section and N, the timestep scaling and sigma_data are this
method's keys: together the ``DiffusionProcess`` that ``diffusion.build.load_pipeline`` samples the student with.
Random draws (n, the noise, a sampled w) come from ``Draws`` (the global RNG, or a generator given to the method), or
are passed in (``forward(..., draws=LCDDraws(...))``, as consistency_models passes ``noise``).

With a ControlNet model (``accepts_control``: the config's ``controlnet`` section) and a control latent ``c`` in the
batch, the same objective distils a *controlled* teacher into a controlled 4-step student, route (b) of PixArt-delta's
controllable LCM (§4): the student is the ControlNet on the LCM student's frozen base (``weights.base``) whose copies
start from the ControlNet trained on the teacher (``weights.controlnet``); ``weights.teacher`` puts the teacher's
base (PixArt-alpha) under a frozen copy of those copies; ``c`` reaches the student, both halves of the teacher's
guidance batch and the target; only the copies train, and the target EMA and its checkpoint cover only them.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file
from torch import Tensor, nn

from diffusion.methods.base import Method, checked_schedule
from diffusion.methods.lcm_targets import EMATarget, StudentTarget, frozen_copy
from diffusion.protocols import ControlledModel, embeds_guidance
from diffusion.registry import METHODS
from diffusion.schedulers import DiffusionProcess, LCMSettings, NoiseSchedule, boundary_scalings

DEFAULT_SAMPLER = dict(name="lcm", steps=4)  # PixArt-delta: 4 LCM steps, no CFG

LORA_TARGETS = ("qkv", "attn.proj", "q_linear", "kv_linear", "cross_attn.proj", "fc1", "fc2", "t_block.1")


def consistency_fn(schedule: NoiseSchedule, xt: Tensor, t: Tensor, eps: Tensor, **scalings) -> Tensor:
    """f(x_t, t) = c_skip(t) x_t + c_out(t) x0(x_t, eps): the parameterisation shared with the LCM sampler."""
    c_skip, c_out = boundary_scalings(t, **scalings)
    shape = (-1,) + (1,) * (xt.ndim - 1)
    x0 = schedule.x0_from_eps(xt, t, eps)
    return c_skip.to(xt.dtype).view(shape) * xt + c_out.to(xt.dtype).view(shape) * x0


@dataclass
class LCDDraws:
    """The random part of one LCD step: grid indices ``index`` (B,) int64 in [0, N), the ``noise`` (B,C,H,W) of
    z_{t_{n+k}} ~ q(z_t | z) and the guidance scales ``w`` (B,)."""

    index: Tensor
    noise: Tensor
    w: Tensor


def add_lora(model: nn.Module, rank: int, alpha: float | None, targets: tuple[str, ...]) -> None:
    """Inject LoRA adapters (peft) into the linear layers named by ``targets``; freeze everything else."""
    from peft import LoraConfig, inject_adapter_in_model

    names = [n for n, m in model.named_modules() if isinstance(m, nn.Linear) and n.endswith(targets)]
    if not names:
        raise ValueError(f"no linear layer of the model matches LoRA targets {targets}")
    inject_adapter_in_model(LoraConfig(r=rank, lora_alpha=alpha or rank, target_modules=names), model)
    for name, p in model.named_parameters():
        p.requires_grad_("lora_" in name)


@METHODS.register_module()
class LCMDistillation(Method):
    """PixArt-delta LCD. Built after the config's weights are loaded, so ``model`` already holds the teacher's
    weights (``weights.base``, which is ``weights.teacher`` unless both are named).

    Args:
        model: the student (trained in place); the teacher and the target are copies taken here.
        schedule: the teacher's noise schedule (the config's ``diffusion`` section, passed by
            ``diffusion.build.build_method``; None: PixArt-alpha's).
        w: the fixed guidance scale (paper: 4.5). ``w_range=(w_min, w_max)`` samples w per example instead.
        guidance_embedding: feed w to the student's/target's w-embedding (``data_info['guidance']``); the model must
            have been built with ``guidance_embedding=True``.
        ema_decay: mu of the target EMA (paper 0.95).
        loss_type, huber_c: 'huber' with c = 0.001 (paper) or 'l2'.
        num_ddim_steps: N of the DDIM grid (50; skip k = T // N = 20).
        sigma_data, timestep_scaling: boundary-scaling arguments (0.5, 10). With N, the :class:`LCMSettings` the
            LCM sampler of this student's config uses (``DiffusionProcess.from_config``).
        null_caption: 'learned' (the model's y_embedding: the official full script) or a .safetensors file holding
            ``y`` (1,1,L,C) = T5("") (the official LoRA script's ``pipe.encode_prompt("")``; written by
            ``tools/make_null_caption.py``), used under each caption's own mask as the official scripts do, or under
            the file's ``y_mask`` (1,L) when it holds one.
        lora: None, or dict(rank=32, alpha=None, targets=LORA_TARGETS): LCM-LoRA; the target is the student itself.
        sampler: the sampler for the trainer's sample grids.
        teacher_dtype, target_dtype: 'bf16' keeps that frozen network in bfloat16 (half the memory; it runs under
            bf16 autocast); None keeps the student's dtype. A bf16 target loses EMA updates smaller than its
            precision (mu = 0.95 moves it by 5% of the gap per step), so that one is a trade-off, off by default.
        teacher_weights: None (the teacher is the loaded ``model`` itself, the usual case) or a weights file (or state
            dict) loaded into the teacher copy, the config's ``weights.teacher`` named apart from ``weights.base``
            (passed by ``diffusion.build.build_method``): for a ControlNet, a plain PixArt-alpha file becomes the
            teacher's base under the student's (trained) copies, an official full ControlNet file the whole teacher;
            else the whole network.
        generator: where n, the noise and a sampled w are drawn from (:class:`diffusion.methods.base.Draws`); None:
            the global RNG, which the trainer seeds and checkpoints per rank (exact resume needs nothing else).
    """

    requires_teacher = True  # a random teacher is never distilled: the config names weights.teacher (or .base)

    def __init__(
        self,
        model: nn.Module,
        schedule: NoiseSchedule | None = None,
        w: float = 4.5,
        w_range: tuple[float, float] | None = None,
        guidance_embedding: bool = False,
        ema_decay: float = 0.95,
        loss_type: str = "huber",
        huber_c: float = 0.001,
        num_ddim_steps: int = LCMSettings.num_ddim_steps,
        sigma_data: float = LCMSettings.sigma_data,
        timestep_scaling: float = LCMSettings.timestep_scaling,
        null_caption: str = "learned",
        lora: dict | None = None,
        sampler: dict | None = None,
        teacher_dtype: str | None = None,
        target_dtype: str | None = None,
        teacher_weights: str | None = None,
        generator: torch.Generator | None = None,
    ) -> None:
        super().__init__(generator)
        if loss_type not in ("huber", "l2"):
            raise ValueError(f"loss_type must be 'huber' or 'l2', got {loss_type!r}")
        if guidance_embedding and not embeds_guidance(model):
            raise ValueError("guidance_embedding=True needs a model built with guidance_embedding=True")
        self.w, self.w_range, self.guidance_embedding = w, w_range, guidance_embedding
        self.ema_decay, self.loss_type, self.huber_c = ema_decay, loss_type, huber_c
        self.lcm = LCMSettings(num_ddim_steps, timestep_scaling, sigma_data)
        self.process = DiffusionProcess(checked_schedule(schedule), self.lcm)
        self.schedule, self.solver = self.process.schedule, self.process.ddim_solver()
        self.sampler = dict(sampler or DEFAULT_SAMPLER)
        self.null, self.null_path = None, None
        if null_caption != "learned":
            self.null_path = Path(null_caption)
            if not self.null_path.is_file():
                raise FileNotFoundError(
                    f'method.null_caption: no file {self.null_path} (write T5("") there with '
                    "tools/make_null_caption.py --text-encoder T5_DIR --out FILE, or set null_caption='learned')"
                )
            self.null = load_file(str(self.null_path))
            if "y" not in self.null:
                raise KeyError(f"method.null_caption: {self.null_path} holds no 'y' tensor (keys: {list(self.null)})")
        # Frozen copies live in plain lists so that they are neither parameters of this module nor in its state_dict.
        self._teacher = [frozen_copy(model, teacher_dtype, teacher_weights)]
        # The learned null caption, kept whole: under FSDP the teacher's own y_embedding is a shard between forwards.
        self.register_buffer("null_y", self.teacher.y_embedder.y_embedding.detach().clone(), persistent=False)
        if lora is not None:
            add_lora(model, lora.get("rank", 32), lora.get("alpha"), tuple(lora.get("targets", LORA_TARGETS)))
            self.target_strategy = StudentTarget(model)  # LCM-LoRA: the student is its own target
        else:
            self.target_strategy = EMATarget(model, ema_decay, target_dtype)
        self._student = [model]

    @property
    def teacher(self) -> nn.Module:
        return self._teacher[0]

    @property
    def target(self) -> nn.Module:
        return self.target_strategy.network

    def _apply(self, fn, recurse=True):  # .to(device) / .half() reach the frozen copies too
        self._teacher[0]._apply(fn)
        self.target_strategy.apply(fn)
        return super()._apply(fn, recurse)

    def frozen_networks(self) -> list[nn.Module]:
        return [self.teacher, *self.target_strategy.frozen_networks()]

    def _uncond(self, y: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
        b = y.shape[0]
        if self.null is None:  # the learned null caption with the caption's own mask (official PixArt-delta)
            return self.null_y[None, None].expand(b, 1, -1, -1).to(y.dtype), mask
        null_y = self.null["y"]
        if null_y.ndim != 4 or null_y.shape[2:] != y.shape[2:]:
            raise ValueError(
                f"method.null_caption: {self.null_path} holds y of shape {tuple(null_y.shape)}; the captions are "
                f"(B, 1, {y.shape[2]}, {y.shape[3]}) (another T5 or max_length?)"
            )
        null_mask = self.null["y_mask"].to(mask).expand(b, -1) if "y_mask" in self.null else mask
        return null_y.to(y).expand(b, -1, -1, -1), null_mask

    def _eps(
        self, net: nn.Module, xt: Tensor, t: Tensor, y: Tensor, mask: Tensor, info: dict, c: Tensor | None = None
    ) -> Tensor:
        dtype = next(net.parameters()).dtype
        low = dtype in (torch.bfloat16, torch.float16) and not torch.is_autocast_enabled(xt.device.type)
        control = {} if c is None else {"c": c}
        with torch.autocast(xt.device.type, dtype=dtype) if low else contextlib.nullcontext():
            return net(xt, t, y, mask, info, **control)[:, : xt.shape[1]].float()

    def draw(self, x0: Tensor) -> LCDDraws:
        """Step 1's random part for a batch like ``x0`` (B,C,H,W): n ~ U{0..N-1}, the noise, and w (the fixed
        guidance, or w ~ U[w_min, w_max)), drawn in that order from ``self.draws``."""
        b, device = x0.shape[0], x0.device
        index = self.draws.randint(0, self.lcm.num_ddim_steps, b, device)
        noise = self.draws.randn_like(x0)
        if self.w_range is None:
            w = torch.full((b,), self.w, device=device)
        else:
            w = self.draws.uniform(b, *self.w_range, device)
        return LCDDraws(index, noise, w)

    def _f(self, xt: Tensor, t: Tensor, eps: Tensor) -> Tensor:
        return consistency_fn(
            self.schedule, xt, t, eps, sigma_data=self.lcm.sigma_data, timestep_scaling=self.lcm.timestep_scaling
        )

    def forward(
        self, model: nn.Module, batch: dict, draws: LCDDraws | None = None
    ) -> tuple[Tensor, dict[str, Tensor]]:
        """One LCD loss evaluation (Algorithm 1) on a prepared batch; ``draws``: given ones instead of
        :meth:`draw`'s. Returns (scalar loss, {"mse_to_target", "w"})."""
        x0, y, mask, info = batch["x0"], batch["y"], batch["y_mask"], dict(batch["data_info"])
        c = batch.get("c")  # a ControlNet's control latent (B, C, H, W), or None
        if c is not None and not isinstance(model, ControlledModel):
            raise ValueError("the batch carries a control latent (data.load_control) but the model is no ControlNet")
        # 1. n ~ U[0, N), t_{n+k} = start_t, t_n = t; z_{t_{n+k}} ~ q(z_t | z).
        draws = self.draw(x0) if draws is None else draws
        index, w = draws.index, draws.w
        start_t, t = self.solver.timesteps_of(index)
        xt = self.schedule.q_sample(x0, start_t, draws.noise)
        student_info = dict(info, guidance=w) if self.guidance_embedding else info
        # 2. Student prediction f_theta(z_{t_{n+k}}, w, c, t_{n+k}).
        pred = self._f(xt, start_t, self._eps(model, xt, start_t, y, mask, student_info, c))
        with torch.no_grad():
            # 3. Teacher: guided DDIM step t_{n+k} -> t_n (LCM form: cond + w (cond - uncond), on x0 and eps).
            y_u, mask_u = self._uncond(y, mask)
            both = self._eps(
                self.teacher,
                torch.cat([xt, xt]),
                torch.cat([start_t, start_t]),
                torch.cat([y, y_u]),
                torch.cat([mask, mask_u]),
                {k: torch.cat([v, v]) for k, v in info.items()},
                None if c is None else torch.cat([c, c]),
            )
            eps_c, eps_u = both.chunk(2)
            x0_c = self.schedule.x0_from_eps(xt, start_t, eps_c)
            x0_u = self.schedule.x0_from_eps(xt, start_t, eps_u)
            wv = w.view(-1, *([1] * (x0.ndim - 1)))
            x_prev = self.solver.ddim_step(x0_c + wv * (x0_c - x0_u), eps_c + wv * (eps_c - eps_u), index).to(x0)
            # 4. Target f_theta^-(z_hat_{t_n}, w, c, t_n).
            target_net = self.target
            was_training = target_net.training
            target_net.eval()
            eps_t = self._eps(target_net, x_prev, t, y, mask, student_info, c)
            target_net.train(was_training)
            target = self._f(x_prev, t, eps_t)
        diff = pred.float() - target.float()
        if self.loss_type == "huber":
            loss = (torch.sqrt(diff.square() + self.huber_c**2) - self.huber_c).mean()
        else:
            loss = diff.square().mean()
        return loss, {"mse_to_target": diff.square().mean().detach(), "w": w.mean().detach()}

    def after_optimizer_step(self, model: nn.Module) -> None:
        """The target's update after each real optimizer step (not after accumulation steps): the EMA of Algorithm 1,
        theta^- <- mu theta^- + (1 - mu) theta; nothing for a student that is its own target."""
        self.target_strategy.update(model)

    def extra_state(self) -> dict[str, Tensor]:
        """The target's weights as ``target.*`` (collective under FSDP); ``{}`` for a student that is its own."""
        return {f"target.{k}": v for k, v in self.target_strategy.state_dict(self._student[0]).items()}

    def load_extra_state(self, state: dict[str, Tensor]) -> None:
        other = sorted(k for k in state if not k.startswith("target."))
        if other:
            raise KeyError(f"unexpected LCM method state {other[:5]} (expected target.*)")
        self.target_strategy.load_state_dict({k[len("target.") :]: v for k, v in state.items()}, self._student[0])

    def train(self, mode: bool = True):
        """The teacher and target always stay in eval mode (no caption dropout)."""
        super().train(mode)
        self.teacher.eval()
        self.target_strategy.eval()
        return self

    @classmethod
    def configured_sampler(
        cls, sampler: dict | None = None, guidance_embedding: bool = False, w: float = 4.5, **method
    ) -> dict:
        """The configured sampler (LCM, 4 steps by default); a w-embedding student is sampled at the method's w
        (cfg_scale = w + 1)."""
        sampler = dict(sampler or DEFAULT_SAMPLER)
        if guidance_embedding:
            sampler.setdefault("cfg_scale", w + 1.0)
        return sampler

    def sampler_defaults(self) -> dict:
        return self.configured_sampler(self.sampler, self.guidance_embedding, self.w)
