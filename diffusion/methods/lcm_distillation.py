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

With a ControlNet model (``accepts_control``: the config's ``controlnet`` section) and a control latent ``c`` in the
batch, the same objective distils a *controlled* teacher into a controlled 4-step student, route (b) of PixArt-delta's
controllable LCM (§4): the student is the ControlNet on the LCM student's frozen base (``load_from``) whose copies
start from the ControlNet trained on the teacher (``controlnet.load_from``); ``teacher_load_from`` puts the teacher's
base (PixArt-alpha) under a frozen copy of those copies; ``c`` reaches the student, both halves of the teacher's
guidance batch and the target; only the copies train, and the target EMA and its checkpoint cover only them.
"""

from __future__ import annotations

import contextlib
import copy
from pathlib import Path

import torch
from safetensors.torch import load_file
from torch import Tensor, nn

from diffusion.methods.base import Method
from diffusion.registry import METHODS
from diffusion.schedulers import DDIMSolver, NoiseSchedule, boundary_scalings

DEFAULT_SAMPLER = dict(name="lcm", steps=4)  # PixArt-delta: 4 LCM steps, no CFG

LORA_TARGETS = ("qkv", "attn.proj", "q_linear", "kv_linear", "cross_attn.proj", "fc1", "fc2", "t_block.1")


def consistency_fn(schedule: NoiseSchedule, xt: Tensor, t: Tensor, eps: Tensor, **scalings) -> Tensor:
    """f(x_t, t) = c_skip(t) x_t + c_out(t) x0(x_t, eps): the parameterisation shared with the LCM sampler."""
    c_skip, c_out = boundary_scalings(t, **scalings)
    shape = (-1,) + (1,) * (xt.ndim - 1)
    x0 = schedule.x0_from_eps(xt, t, eps)
    return c_skip.to(xt.dtype).view(shape) * xt + c_out.to(xt.dtype).view(shape) * x0


def _frozen_copy(model: nn.Module, dtype: str | None, load_from: str | None = None) -> nn.Module:
    """A frozen eval-mode copy of ``model`` (in bf16 when ``dtype == 'bf16'``), holding ``load_from``'s weights when
    given (see :func:`diffusion.build.load_teacher_weights`)."""
    if dtype not in (None, "bf16"):
        raise ValueError(f"frozen network dtype must be None or 'bf16', got {dtype!r}")
    net = copy.deepcopy(model).eval().requires_grad_(False)
    if load_from is not None:
        from diffusion.build import load_teacher_weights  # lazy: diffusion.build imports the registry

        load_teacher_weights(net, load_from)
    return net.to(torch.bfloat16) if dtype == "bf16" else net


def _local(tensor: Tensor) -> Tensor:
    """This rank's shard of an FSDP2 DTensor (a view: in-place updates reach the parameter); else the tensor."""
    return tensor.to_local() if hasattr(tensor, "to_local") else tensor


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
    """PixArt-delta LCD. Built after ``load_from``, so ``model`` already holds the teacher's weights.

    Args:
        model: the student (trained in place); the teacher and the target are copies taken here.
        w: the fixed guidance scale (paper: 4.5). ``w_range=(w_min, w_max)`` samples w per example instead.
        guidance_embedding: feed w to the student's/target's w-embedding (``data_info['guidance']``); the model must
            have been built with ``guidance_embedding=True``.
        ema_decay: mu of the target EMA (paper 0.95).
        loss_type, huber_c: 'huber' with c = 0.001 (paper) or 'l2'.
        num_ddim_steps: N of the DDIM grid (50; skip k = 1000 // N = 20).
        sigma_data, timestep_scaling: boundary-scaling arguments (0.5, 10), shared with the LCM sampler.
        null_caption: 'learned' (the model's y_embedding: the official full script) or a .safetensors file holding
            ``y`` (1,1,L,C) = T5("") (the official LoRA script's ``pipe.encode_prompt("")``; written by
            ``tools/make_null_caption.py``), used under each caption's own mask as the official scripts do, or under
            the file's ``y_mask`` (1,L) when it holds one.
        lora: None, or dict(rank=32, alpha=None, targets=LORA_TARGETS): LCM-LoRA; the target is the student itself.
        sampler: the sampler for the trainer's sample grids.
        teacher_dtype, target_dtype: 'bf16' keeps that frozen network in bfloat16 (half the memory; it runs under
            bf16 autocast); None keeps the student's dtype. A bf16 target loses EMA updates smaller than its
            precision (mu = 0.95 moves it by 5% of the gap per step), so that one is a trade-off, off by default.
        teacher_load_from: None (the teacher is the loaded ``model`` itself, the usual case) or a weights file loaded
            into the teacher copy: for a ControlNet, a plain PixArt-alpha file becomes the teacher's base under the
            student's (trained) copies, an official full ControlNet file the whole teacher; else the whole network.
    """

    requires_load_from = True  # a random teacher is never distilled

    def __init__(
        self,
        model: nn.Module,
        w: float = 4.5,
        w_range: tuple[float, float] | None = None,
        guidance_embedding: bool = False,
        ema_decay: float = 0.95,
        loss_type: str = "huber",
        huber_c: float = 0.001,
        num_train_steps: int = 1000,
        beta_start: float = 1e-4,
        beta_end: float = 0.02,
        num_ddim_steps: int = 50,
        sigma_data: float = 0.5,
        timestep_scaling: float = 10.0,
        null_caption: str = "learned",
        lora: dict | None = None,
        sampler: dict | None = None,
        teacher_dtype: str | None = None,
        target_dtype: str | None = None,
        teacher_load_from: str | None = None,
    ) -> None:
        super().__init__()
        if loss_type not in ("huber", "l2"):
            raise ValueError(f"loss_type must be 'huber' or 'l2', got {loss_type!r}")
        if guidance_embedding and getattr(model, "w_embedder", None) is None:
            raise ValueError("guidance_embedding=True needs a model built with guidance_embedding=True")
        self.w, self.w_range, self.guidance_embedding = w, w_range, guidance_embedding
        self.ema_decay, self.loss_type, self.huber_c = ema_decay, loss_type, huber_c
        self.scalings = dict(sigma_data=sigma_data, timestep_scaling=timestep_scaling)
        self.schedule = NoiseSchedule(num_train_steps, beta_start, beta_end)
        self.solver = DDIMSolver(self.schedule.alphas_cumprod, num_train_steps, num_ddim_steps)
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
        self._teacher = [_frozen_copy(model, teacher_dtype, teacher_load_from)]
        # The learned null caption, kept whole: under FSDP the teacher's own y_embedding is a shard between forwards.
        self.register_buffer("null_y", self.teacher.y_embedder.y_embedding.detach().clone(), persistent=False)
        if lora is not None:
            add_lora(model, lora.get("rank", 32), lora.get("alpha"), tuple(lora.get("targets", LORA_TARGETS)))
            self._target = None  # LCM-LoRA: the student is its own target
        else:
            self._target = [_frozen_copy(model, target_dtype)]
        self._student = [model]

    @property
    def teacher(self) -> nn.Module:
        return self._teacher[0]

    @property
    def target(self) -> nn.Module:
        return self._student[0] if self._target is None else self._target[0]

    def _apply(self, fn, recurse=True):  # .to(device) / .half() reach the frozen copies too
        self._teacher[0]._apply(fn)
        if self._target is not None:
            self._target[0]._apply(fn)
        return super()._apply(fn, recurse)

    def frozen_networks(self) -> list[nn.Module]:
        return [self.teacher] + ([] if self._target is None else [self._target[0]])

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

    def forward(self, model: nn.Module, batch: dict) -> tuple[Tensor, dict[str, Tensor]]:
        x0, y, mask, info = batch["x0"], batch["y"], batch["y_mask"], dict(batch["data_info"])
        c = batch.get("c")  # a ControlNet's control latent (B, C, H, W), or None
        if c is not None and not getattr(model, "accepts_control", False):
            raise ValueError("the batch carries a control latent (data.load_control) but the model is no ControlNet")
        b = x0.shape[0]
        # 1. n ~ U[0, N), t_{n+k} = start_t, t_n = t; z_{t_{n+k}} ~ q(z_t | z).
        index, start_t, t = self.solver.sample_lcd_timesteps(b, device=x0.device)
        xt = self.schedule.q_sample(x0, start_t, torch.randn_like(x0))
        if self.w_range is None:
            w = torch.full((b,), self.w, device=x0.device)
        else:
            w = torch.empty(b, device=x0.device).uniform_(*self.w_range)
        student_info = dict(info, guidance=w) if self.guidance_embedding else info
        # 2. Student prediction f_theta(z_{t_{n+k}}, w, c, t_{n+k}).
        pred = consistency_fn(
            self.schedule, xt, start_t, self._eps(model, xt, start_t, y, mask, student_info, c), **self.scalings
        )
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
            target = consistency_fn(self.schedule, x_prev, t, eps_t, **self.scalings)
        diff = pred.float() - target.float()
        if self.loss_type == "huber":
            loss = (torch.sqrt(diff.square() + self.huber_c**2) - self.huber_c).mean()
        else:
            loss = diff.square().mean()
        return loss, {"mse_to_target": diff.square().mean().detach(), "w": w.mean().detach()}

    @torch.no_grad()
    def after_optimizer_step(self, model: nn.Module) -> None:
        """theta^- <- mu theta^- + (1 - mu) theta, after each real optimizer step (not after accumulation steps)."""
        if self._target is None:
            return
        student = dict(model.named_parameters())
        target, source = [], []
        for name, p in self._target[0].named_parameters():
            if not student[name].requires_grad:  # a ControlNet's frozen base: equal in both, nothing to average
                continue
            # FSDP: both are DTensors sharded alike on one mesh, so the EMA is a shard-local update.
            target.append(_local(p))
            source.append(_local(student[name].detach()).to(p.dtype))
        torch._foreach_lerp_(target, source, 1.0 - self.ema_decay)

    def extra_state(self) -> dict[str, Tensor]:
        """The target network, gathered under FSDP (collective) so a checkpoint fits any world size; of a model with
        frozen parameters (a ControlNet's base) only the trained ones, as the trainer saves the student."""
        if self._target is None:
            return {}
        from diffusion.engine.checkpoint import trainable_only
        from diffusion.engine.parallel import full_state_dict

        state = trainable_only(self._student[0], full_state_dict(self._target[0]))
        return {f"target.{k}": v for k, v in state.items()}

    def load_extra_state(self, state: dict[str, Tensor]) -> None:
        if self._target is None:
            super().load_extra_state(state)
            return
        from diffusion.engine.parallel import load_full_state_dict

        state = {k[len("target.") :]: v for k, v in state.items()}
        params = dict(self._student[0].named_parameters())
        trained = {name for name, p in params.items() if p.requires_grad}
        missing = sorted(trained - set(state))
        if missing:
            raise KeyError(f"the checkpoint's target lacks trained parameters {missing[:5]} (of {len(missing)})")
        # as extra_state wrote it: whole for a fully trained student, the trained names only otherwise
        load_full_state_dict(self._target[0], state, strict=len(trained) == len(params))

    def train(self, mode: bool = True):
        """The teacher and target always stay in eval mode (no caption dropout)."""
        super().train(mode)
        self.teacher.eval()
        if self._target is not None:
            self._target[0].eval()
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
