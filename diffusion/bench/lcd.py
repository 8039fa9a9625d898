"""One LCM distillation step of ours against the official script's step on diffusers' transformer (issue 20 item 6).

PixArt-delta §3.1 (Algorithm 1) trains a student towards an EMA target of itself through one classifier-free-guided
DDIM step of a frozen teacher. Both sides of this benchmark run one whole training step of that, from the same
random weights and on the same inputs and draws (grid indices, noise):

- **ours** is built the way the trainer builds it: the LCM config's model (``build_model``, through
  :func:`diffusion.bench.random_pixart`), its method (``diffusion.build.build_method``: ``LCMDistillation`` with its
  teacher and EMA target copies) and optimizer (``diffusion.engine.optim.build_optimizer``), and steps as
  ``Trainer.train_step`` does: ``method(model, batch)`` under the autocast of the precision, backward, gradient
  clipping, optimizer step, ``method.after_optimizer_step`` (the target EMA);
- **the reference** is the step of the official ``train_scripts/train_pixart_lcm.py`` written on diffusers'
  ``PixArtTransformer2DModel`` holding the same weights (:func:`diffusion.bench.diffusers_twin`): its own IDDPM
  schedule arrays and DDIM solver, the student's forward and backward, the teacher's conditional and unconditional
  passes as two calls (the unconditional one on the learned null caption under the caption's own mask), the EMA
  model's forward, c_skip/c_out with ``t / 0.1``, the Huber loss, ``clip_grad_norm_``, ``torch.optim.AdamW`` and
  DiT's per-parameter ``update_ema``.

Not timed on either side: data loading and encoding, the lr schedule (one multiplication) and logging. The trainer's
lr warmup would make the first step's lr 0, so both optimizers run at the config's lr.
"""

from __future__ import annotations

import copy
import statistics
from collections import OrderedDict
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor, nn

from diffusion.bench import LCM_CONFIG, Size, diffusers_twin, random_pixart, timed
from diffusion.methods import LCDDraws
from diffusion.model.diffusers_format import diffusers_forward

AMP = {"fp32": None, "bf16": torch.bfloat16}


def lcd_config(precision: str) -> dict:
    """The LCM config (``configs/lcm/pixartms_xl2_img1024_lcm.py``) as this benchmark builds it: the learned null
    caption, the teacher in the config's dtype under bf16 and in fp32 otherwise, no weight files (random weights),
    mixed precision ``precision``. The model section is :func:`diffusion.bench.random_pixart`'s."""
    from mmengine.config import Config

    if precision not in AMP:
        raise ValueError(f"precision must be one of {sorted(AMP)}, got {precision!r}")
    cfg = Config.fromfile(str(LCM_CONFIG)).to_dict()
    method = dict(cfg["method"], null_caption="learned")
    if precision == "fp32":
        method.update(teacher_dtype=None, target_dtype=None)
    cfg.pop("weights", None)
    return dict(cfg, method=method, train=dict(cfg["train"], mixed_precision=precision))


def lcd_batch(
    size: Size, batch: int, valid_tokens: int, caption_channels: int, device: str = "cpu", seed: int = 1
) -> dict:
    """A prepared batch as ``Trainer.train_step`` hands it to the method: latents ``x0`` (B,4,h,w), captions ``y``
    (B,1,120,C) of which the first ``valid_tokens - 3 i`` tokens of example i are valid (``y_mask``), micro-conditions
    of a square image."""
    g = torch.Generator().manual_seed(seed)
    side = size.resolution // 8
    mask = torch.zeros(batch, 120, dtype=torch.long)
    for i in range(batch):
        mask[i, : max(valid_tokens - 3 * i, 1)] = 1  # short prompts of different lengths, as real T5 captions
    x0, y = torch.randn(batch, 4, side, side, generator=g), torch.randn(batch, 1, 120, caption_channels, generator=g)
    info = {"img_hw": torch.full((batch, 2), float(size.resolution)), "aspect_ratio": torch.ones(batch, 1)}
    return dict(
        x0=x0.to(device), y=y.to(device), y_mask=mask.to(device), data_info={k: v.to(device) for k, v in info.items()}
    )


class OursStep:
    """Our LCD training step, built and run as the trainer builds and runs it (see the module docstring)."""

    def __init__(self, cfg: dict, model: nn.Module, device: str) -> None:
        from diffusion.build import build_method
        from diffusion.engine.optim import build_optimizer

        self.model = model
        self.method = build_method(cfg, model)  # copies the teacher and the EMA target from the model as it is now
        self.model.to(device)
        self.method.to(device)
        self.params = [p for p in model.parameters() if p.requires_grad]
        self.optimizer = build_optimizer(self.params, cfg["optimizer"], cfg["optimizer"]["lr"])
        self.amp, self.grad_clip, self.device = AMP[cfg["train"]["mixed_precision"]], cfg["train"]["grad_clip"], device

    def __call__(self, batch: dict, draws: LCDDraws) -> tuple[float, float]:
        """One optimizer step; returns (loss, gradient norm before clipping)."""
        self.model.train()
        with torch.autocast(torch.device(self.device).type, dtype=self.amp, enabled=self.amp is not None):
            loss, _ = self.method(self.model, batch, draws=draws)
        loss.backward()
        grad_norm = torch.nn.utils.clip_grad_norm_(self.params, self.grad_clip)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.method.after_optimizer_step(self.model)
        return loss.item(), grad_norm.item()


class OfficialSolver:
    """The official script's IDDPM arrays (float64, linear betas) and its ``DDIMSolver`` (N of T steps)."""

    def __init__(self, beta_start: float, beta_end: float, steps: int, ddim_steps: int) -> None:
        betas = np.linspace(beta_start, beta_end, steps, dtype=np.float64)
        ac = np.cumprod(1.0 - betas)
        self.sqrt_ac, self.sqrt_1m_ac = np.sqrt(ac), np.sqrt(1.0 - ac)
        self.sqrt_recip_ac, self.sqrt_recipm1_ac = np.sqrt(1.0 / ac), np.sqrt(1.0 / ac - 1)
        self.skip = steps // ddim_steps
        ddim_t = np.arange(1, ddim_steps + 1) * self.skip - 1
        self.ddim_timesteps = torch.from_numpy(ddim_t).long()
        self.ac_prev = torch.from_numpy(np.asarray([ac[0]] + ac[ddim_t[:-1]].tolist()))

    @staticmethod
    def extract(arr: np.ndarray, t: Tensor, ndim: int) -> Tensor:
        """IDDPM's ``_extract_into_tensor``: arr[t] as float32, shaped (B, 1, ..., 1)."""
        out = torch.from_numpy(arr).to(t.device)[t].float()
        return out.view(-1, *([1] * (ndim - 1)))

    def ddim_step(self, x0: Tensor, eps: Tensor, index: Tensor) -> Tensor:
        a_prev = self.ac_prev.to(x0.device)[index].view(-1, *([1] * (x0.ndim - 1)))
        return a_prev.sqrt() * x0 + (1.0 - a_prev).sqrt() * eps


def official_scalings(t: Tensor, sigma_data: float, ndim: int) -> tuple[Tensor, Tensor]:
    """``scalings_for_boundary_conditions`` of the official script (its hard-coded ``t / 0.1``)."""
    s = t / 0.1
    c_skip = sigma_data**2 / (s**2 + sigma_data**2)
    c_out = s / (s**2 + sigma_data**2) ** 0.5
    shape = (-1, *([1] * (ndim - 1)))
    return c_skip.view(shape), c_out.view(shape)


class ReferenceStep:
    """The official script's LCD step on diffusers' ``PixArtTransformer2DModel`` holding ``ours``' weights (taken
    before our first step): student, teacher and EMA model are three copies of it; the teacher in the dtype of ours."""

    def __init__(self, cfg: dict, ours: nn.Module, teacher_dtype: torch.dtype, device: str) -> None:
        m, o, diffusion = cfg["method"], cfg["optimizer"], cfg.get("diffusion") or {}
        self.student = diffusers_twin(ours).to(device).train().requires_grad_(True)
        if ours.grad_checkpointing:
            self.student.enable_gradient_checkpointing()
        self.teacher = copy.deepcopy(self.student).eval().requires_grad_(False).to(teacher_dtype)
        self.ema = copy.deepcopy(self.student).eval().requires_grad_(False)
        self.null_y = ours.y_embedder.y_embedding.detach().clone().to(device)  # (L, C): the official uncond_y
        self.solver = OfficialSolver(
            diffusion.get("beta_start", 1e-4),
            diffusion.get("beta_end", 0.02),
            diffusion.get("num_train_timesteps", 1000),
            m["num_ddim_steps"],
        )
        self.w, self.ema_decay, self.huber_c, self.sigma_data = m["w"], m["ema_decay"], m["huber_c"], m["sigma_data"]
        kwargs = {k: o[k] for k in ("weight_decay", "eps", "betas") if k in o}
        self.optimizer = torch.optim.AdamW(self.student.parameters(), lr=o["lr"], **kwargs)
        self.amp, self.grad_clip, self.device = AMP[cfg["train"]["mixed_precision"]], cfg["train"]["grad_clip"], device

    def _autocast(self):
        return torch.autocast(torch.device(self.device).type, dtype=self.amp, enabled=self.amp is not None)

    def _eps_x0(self, net: nn.Module, xt: Tensor, t: Tensor, y: Tensor, batch: dict) -> tuple[Tensor, Tensor]:
        """IDDPM ``training_losses(..., return_startx=True)``: eps (the first C of 2C channels) and x0 from it."""
        out = diffusers_forward(net, xt, t, y, batch["y_mask"], batch["data_info"])
        eps = out[:, : xt.shape[1]]
        s = self.solver
        return eps, s.extract(s.sqrt_recip_ac, t, xt.ndim) * xt - s.extract(s.sqrt_recipm1_ac, t, xt.ndim) * eps

    def __call__(self, batch: dict, draws: LCDDraws) -> tuple[float, float]:
        s, x0, y = self.solver, batch["x0"], batch["y"]
        index, noise = draws.index, draws.noise
        start_t = s.ddim_timesteps.to(index.device)[index]
        t = (start_t - s.skip).clamp(min=0)
        c_skip_start, c_out_start = official_scalings(start_t, self.sigma_data, x0.ndim)
        c_skip, c_out = official_scalings(t, self.sigma_data, x0.ndim)
        xt = s.extract(s.sqrt_ac, start_t, x0.ndim) * x0 + s.extract(s.sqrt_1m_ac, start_t, x0.ndim) * noise
        self.optimizer.zero_grad()
        with self._autocast():
            _, x0_s = self._eps_x0(self.student, xt, start_t, y, batch)
            model_pred = c_skip_start * xt + c_out_start * x0_s
            with torch.no_grad():
                uncond_y = self.null_y.repeat(x0.shape[0], 1, 1, 1)  # (B, 1, L, C), under the caption's own mask
                eps_c, x0_c = self._eps_x0(self.teacher, xt, start_t, y, batch)
                eps_u, x0_u = self._eps_x0(self.teacher, xt, start_t, uncond_y, batch)
                pred_x0 = x0_c + self.w * (x0_c - x0_u)
                pred_eps = eps_c + self.w * (eps_c - eps_u)
                x_prev = s.ddim_step(pred_x0, pred_eps, index).float()
                _, x0_e = self._eps_x0(self.ema, x_prev, t, y, batch)
                target = c_skip * x_prev + c_out * x0_e
            diff = model_pred.float() - target.float()
            loss = torch.mean(torch.sqrt(diff**2 + self.huber_c**2) - self.huber_c)
        loss.backward()
        grad_norm = torch.nn.utils.clip_grad_norm_(self.student.parameters(), self.grad_clip)
        self.optimizer.step()
        self._update_ema()
        return loss.item(), grad_norm.item()

    @torch.no_grad()
    def _update_ema(self) -> None:
        """DiT's ``update_ema`` (the official script's): p_ema = mu p_ema + (1 - mu) p, one parameter at a time."""
        ema_params = OrderedDict(self.ema.named_parameters())
        for name, param in self.student.named_parameters():
            ema_params[name].mul_(self.ema_decay).add_(param.data, alpha=1 - self.ema_decay)


@dataclass
class LCDResult:
    precision: str
    ours: float  # median seconds of one step
    reference: float
    first: float  # seconds of the first (warm-up) round, both sides
    loss_ours: float  # step 1, same weights, inputs and draws
    loss_reference: float
    grad_norm_ours: float
    grad_norm_reference: float

    @property
    def ratio(self) -> float:
        return self.reference / self.ours

    @property
    def loss_rel_diff(self) -> float:
        return abs(self.loss_ours - self.loss_reference) / abs(self.loss_reference)


def build_sides(size: Size, precision: str, device: str, checkpointing: bool = True) -> tuple[OursStep, ReferenceStep]:
    """Both steps from the same random weights (N(0, 0.02) everywhere, so no layer sits at its zero init)."""
    cfg = lcd_config(precision)
    model = random_pixart(size, LCM_CONFIG, grad_checkpointing=checkpointing)
    teacher_dtype = torch.bfloat16 if cfg["method"].get("teacher_dtype") == "bf16" else torch.float32
    reference = ReferenceStep(cfg, model, teacher_dtype, device)  # before ours steps: the same starting weights
    return OursStep(cfg, model, device), reference


def bench_lcd(
    size: Size,
    precision: str,
    batch: int = 2,
    valid_tokens: int = 20,
    device: str = "cpu",
    warmup: int = 1,
    repeats: int = 5,
    checkpointing: bool = True,
) -> LCDResult:
    """Median seconds of one LCD step of each side over ``repeats`` interleaved rounds (after ``warmup`` rounds; the
    order alternates per round), and both sides' loss and gradient norm at step 1."""
    ours, reference = build_sides(size, precision, device, checkpointing)
    data = lcd_batch(size, batch, valid_tokens, ours.model.caption_channels, device)
    torch.manual_seed(3)
    draws = ours.method.draw(data["x0"])  # fixed n and noise: every step of both sides sees the same ones
    sides = {"ours": ours, "reference": reference}
    step1: dict[str, tuple[float, float]] = {}
    times: dict[str, list[float]] = {name: [] for name in sides}
    first = 0.0
    for rnd in range(warmup + repeats):
        for name in sides if rnd % 2 == 0 else reversed(sides):  # alternate who goes first
            out: list[tuple[float, float]] = []
            elapsed = timed(lambda n=name, out=out: out.append(sides[n](data, draws)), device)
            step1.setdefault(name, out[0])
            if rnd < warmup:
                first += elapsed
            else:
                times[name].append(elapsed)
    med = {name: statistics.median(v) for name, v in times.items()}
    (loss_o, norm_o), (loss_r, norm_r) = step1["ours"], step1["reference"]
    return LCDResult(precision, med["ours"], med["reference"], first, loss_o, loss_r, norm_o, norm_r)
