"""Small stand-ins for the model, method and dataset contracts of docs/design.md, registered under names the real
packages do not use, so the engine is tested without them. Imported by the engine tests and the torchrun entry."""

import torch
import torch.nn.functional as F
from torch import nn

from diffusion.registry import DATASETS, METHODS, MODELS

LATENT_CHANNELS = 4
LATENT_SIZE = 4
TEXT_LEN = 3
TEXT_CHANNELS = 8


@MODELS.register_module(name="EngineTinyNet", force=True)
class TinyNet(nn.Module):
    """PixArt forward signature with a few parameters: 1x1 conv on x, plus timestep and pooled-caption shifts."""

    def __init__(self, channels: int = LATENT_CHANNELS, caption_channels: int = TEXT_CHANNELS) -> None:
        super().__init__()
        self.in_channels = self.out_channels = channels
        self.blocks = nn.ModuleList([nn.Conv2d(channels, channels, 1), nn.Conv2d(channels, channels, 1)])
        self.t_proj = nn.Linear(1, channels)
        self.y_proj = nn.Linear(caption_channels, channels)
        self.register_buffer("pos_embed", torch.zeros(1, channels, 1, 1))

    def forward(self, x, timestep, y, mask=None, data_info=None):
        shift = self.t_proj(timestep.float()[:, None] / 1000) + self.y_proj(y[:, 0].mean(1))  # (B, C)
        h = self.blocks[0](x + self.pos_embed) + shift[:, :, None, None]
        return self.blocks[1](torch.tanh(h))


class _InfGrad(torch.autograd.Function):
    """Identity forward, infinite gradient backward: a finite loss whose gradients overflow (as bf16 can)."""

    @staticmethod
    def forward(ctx, x):
        return x.clone()

    @staticmethod
    def backward(ctx, grad):
        return grad * float("inf")


@METHODS.register_module(name="EngineMSELoss", force=True)
class MSELoss(nn.Module):
    """eps-prediction MSE; ``noise=False`` makes it deterministic (predict -x0 at t=0); ``nan_calls`` lists the
    0-based forward calls that return a NaN loss, ``inf_grad_calls`` those whose (finite) loss has infinite
    gradients. Counts optimizer steps in its checkpointed extra state."""

    def __init__(
        self,
        model: nn.Module,
        noise: bool = True,
        nan_calls: tuple[int, ...] = (),
        inf_grad_calls: tuple[int, ...] = (),
    ) -> None:
        super().__init__()
        self.noise, self.nan_calls, self.inf_grad_calls, self.calls = noise, set(nan_calls), set(inf_grad_calls), 0
        self.register_buffer("steps", torch.zeros((), dtype=torch.long))

    def forward(self, model, batch):
        x0 = batch["x0"]
        if self.noise:
            eps = torch.randn_like(x0)
            t = torch.randint(0, 1000, (x0.shape[0],), device=x0.device)
            xt, target = x0 + eps, eps
        else:
            t = torch.zeros(x0.shape[0], dtype=torch.long, device=x0.device)
            xt, target = x0, -x0
        pred = model(xt, t, batch["y"], batch["y_mask"], batch["data_info"])
        loss = F.mse_loss(pred, target)
        if self.calls in self.nan_calls:
            loss = loss * float("nan")
        if self.calls in self.inf_grad_calls:
            loss = _InfGrad.apply(loss)
        self.calls += 1
        return loss, {"mse": loss.detach(), "x0_std": x0.std()}

    def after_optimizer_step(self, model) -> None:
        self.steps += 1

    def extra_state(self) -> dict[str, torch.Tensor]:
        return {"steps": self.steps.clone()}

    def load_extra_state(self, state: dict[str, torch.Tensor]) -> None:
        self.steps.copy_(state["steps"])

    def sampler_defaults(self) -> dict:
        return {"steps": 2}


@DATASETS.register_module(name="EngineMemDataset", force=True)
class MemDataset(torch.utils.data.Dataset):
    """Contract items computed from the index; ``std`` is the posterior std (0 makes latents deterministic)."""

    def __init__(self, size: int = 16, std: float = 0.1) -> None:
        self.size, self.std = size, std
        self.aspect_ratios = [1.0 if i % 3 else 0.5 for i in range(size)]  # two buckets for AspectRatioBatchSampler

    def __len__(self) -> int:
        return self.size

    def __getitem__(self, index: int) -> dict:
        g = torch.Generator().manual_seed(index)
        mean = torch.randn(LATENT_CHANNELS, LATENT_SIZE, LATENT_SIZE, generator=g)
        return {
            "vae_feat": torch.cat([mean, torch.full_like(mean, self.std)]),
            "y": torch.randn(1, TEXT_LEN, TEXT_CHANNELS, generator=g),
            "y_mask": torch.ones(TEXT_LEN, dtype=torch.long),
            "img_hw": torch.tensor([8.0, 8.0]),
            "aspect_ratio": torch.tensor([1.0]),
            "prompt": f"item {index}",
            "index": index,
        }

    @staticmethod
    def collate(items: list[dict]) -> dict:
        return torch.utils.data.default_collate(items)

    @staticmethod
    def prepare_batch(batch: dict, scale_factor: float, generator: torch.Generator) -> dict:
        mean, std = batch["vae_feat"].chunk(2, dim=1)
        noise = torch.randn(mean.shape, generator=generator, device=mean.device)
        return {
            "x0": (mean + std * noise) * scale_factor,
            "y": batch["y"],
            "y_mask": batch["y_mask"],
            "data_info": {"img_hw": batch["img_hw"], "aspect_ratio": batch["aspect_ratio"]},
            "prompt": batch["prompt"],
        }


def tiny_config(**overrides) -> dict:
    """A complete trainer config over the stand-ins; ``overrides`` replace whole sections or update dict sections."""
    cfg = dict(
        model=dict(type="EngineTinyNet"),
        load_from=None,
        method=dict(type="EngineMSELoss"),
        data=dict(type="EngineMemDataset", size=8),
        data_sampler=None,
        codec=dict(type="PixelCodec", scale_factor=0.5),
        optimizer=dict(type="AdamW", lr=1e-2, weight_decay=0.0, eps=1e-8, betas=(0.9, 0.999)),
        lr_schedule=dict(type="cosine", warmup_steps=2, min_lr_ratio=0.1),
        train=dict(max_steps=6, batch_size=2, grad_accum=1, ema_rate=0.9, seed=3, num_workers=0),
        checkpoint=dict(every=3, keep_last=5),
        log=dict(every=1),
        validation=None,
    )
    for key, value in overrides.items():
        cfg[key] = {**cfg[key], **value} if isinstance(cfg.get(key), dict) and isinstance(value, dict) else value
    return cfg
