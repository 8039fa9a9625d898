"""Teacher / ControlNet objective: PixArt-alpha's IDDPM hybrid loss (PixArt-delta arXiv 2401.05252 §4.2 trains the
ControlNet-Transformer with exactly the teacher's loss: eps MSE + VB for the learned variance, t ~ U{0..T-1})."""

import torch
from torch import Tensor, nn

from diffusion.methods.base import Method, checked_schedule
from diffusion.registry import METHODS
from diffusion.schedulers import NoiseSchedule, hybrid_loss

DEFAULT_SAMPLER = dict(name="dpm")  # steps and guidance: diffusion.pipeline.SAMPLER_DEFAULTS


@METHODS.register_module()
class DiffusionLoss(Method):
    """Denoising diffusion loss of PixArt-alpha.

    Args:
        model: the network to train (only checked for ``pred_sigma`` consistency; not stored).
        schedule: the noise schedule (the config's ``diffusion`` section, passed by ``diffusion.build.build_method``;
            None: PixArt-alpha's).
        pred_sigma: the model outputs [eps | v] and the VB term trains the learned variance.
        snr_loss: PixArt's optional x0 target for small t (see ``hybrid_loss``).
        snr_gamma: Min-SNR-gamma weighting of the eps MSE (see ``hybrid_loss``); None = PixArt's uniform weight.
        snr_floor: x0-MSE weighting below this SNR (see ``hybrid_loss``); None = PixArt's uniform weight.
        high_noise_prob, high_noise_from: draw t from U{high_noise_from..T-1} with probability ``high_noise_prob``,
            else from U{0..T-1} (0 = PixArt's uniform t). The high-noise steps are where a sampler decides the
            composition from the caption; the tiny teacher oversamples them to learn captions within a CPU budget.
        sampler: what ``sampler_defaults`` returns; PixArt-alpha's DPM-Solver++, 20 steps, guidance 4.5 by default.
        generator: where t and the noise are drawn from (see :class:`diffusion.methods.base.Draws`); None: the
            global RNG, as PixArt's ``randint`` (the trainer seeds and checkpoints it per rank).
    """

    def __init__(
        self,
        model: nn.Module,
        schedule: NoiseSchedule | None = None,
        pred_sigma: bool = True,
        snr_loss: bool = False,
        snr_gamma: float | None = None,
        snr_floor: float | None = None,
        high_noise_prob: float = 0.0,
        high_noise_from: int = 700,
        sampler: dict | None = None,
        generator: torch.Generator | None = None,
    ) -> None:
        super().__init__(generator)
        model_pred_sigma = getattr(model, "pred_sigma", pred_sigma)
        if model_pred_sigma != pred_sigma:
            raise ValueError(f"method pred_sigma={pred_sigma} but the model has pred_sigma={model_pred_sigma}")
        self.schedule = checked_schedule(schedule)
        self.pred_sigma = pred_sigma
        self.snr_loss = snr_loss
        if snr_gamma is not None and snr_gamma <= 0:
            raise ValueError(f"snr_gamma must be positive or None, got {snr_gamma}")
        self.snr_gamma = snr_gamma
        if snr_floor is not None and not (snr_floor > 0 and (snr_gamma is None or snr_floor <= snr_gamma)):
            raise ValueError(f"snr_floor must be positive and <= snr_gamma, got {snr_floor} (gamma {snr_gamma})")
        self.snr_floor = snr_floor
        num_steps = self.schedule.num_train_timesteps
        if not 0.0 <= high_noise_prob <= 1.0 or (high_noise_prob > 0 and not 0 <= high_noise_from < num_steps):
            raise ValueError(
                f"need 0 <= high_noise_prob <= 1 and 0 <= high_noise_from < {num_steps} (diffusion."
                f"num_train_timesteps), got {high_noise_prob} and {high_noise_from}"
            )
        self.high_noise_prob, self.high_noise_from = high_noise_prob, high_noise_from
        self.sampler = dict(DEFAULT_SAMPLER if sampler is None else sampler)

    def forward(self, model: nn.Module, batch: dict) -> tuple[Tensor, dict[str, Tensor]]:
        """One loss evaluation.

        Args:
            model: ``model(xt, t, y, y_mask, data_info[, c=c]) -> (B, 2C or C, H, W)``.
            batch: prepared batch ``{x0 (B,C,H,W), y (B,1,L,D), y_mask (B,L), data_info, prompt[, c (B,C,H,W)]}``.
        Returns: (scalar mean loss, {"mse", "vb"} as detached 0-d tensors).
        """
        x0 = batch["x0"]
        t = self.sample_timesteps(x0.shape[0], x0.device)
        eps = self.draws.randn_like(x0)
        xt = self.schedule.q_sample(x0, t, eps)
        extra = {"c": batch["c"]} if batch.get("c") is not None else {}
        out = model(xt, t, batch["y"], batch["y_mask"], batch["data_info"], **extra)
        terms = hybrid_loss(
            self.schedule,
            out.float(),
            x0.float(),
            xt.float(),
            t,
            eps.float(),
            self.pred_sigma,
            self.snr_loss,
            snr_gamma=self.snr_gamma,
            snr_floor=self.snr_floor,
        )
        logs = {"mse": terms["mse"].mean().detach(), "vb": terms["vb"].mean().detach()}
        return terms["loss"].mean(), logs

    def sample_timesteps(self, batch_size: int, device: torch.device) -> Tensor:
        """(B,) int64 timesteps: uniform, or the high-noise mixture. Without a generator the global RNG on
        ``device``, so seeding the process seeds the loss; the uniform case draws exactly what PixArt's ``randint``
        draws."""
        num_steps = self.schedule.num_train_timesteps
        t = self.draws.randint(0, num_steps, batch_size, device)
        if self.high_noise_prob > 0:
            high = self.draws.randint(self.high_noise_from, num_steps, batch_size, device)
            t = torch.where(self.draws.rand(batch_size, device) < self.high_noise_prob, high, t)
        return t

    @classmethod
    def configured_sampler(cls, sampler: dict | None = None, **method) -> dict:
        return dict(DEFAULT_SAMPLER if sampler is None else sampler)

    def sampler_defaults(self) -> dict:
        return self.configured_sampler(self.sampler)
