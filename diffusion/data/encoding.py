"""On-the-fly encoding: a batch of images and captions (what ``ShardDataset`` yields) becomes the prepared batch of
docs/design.md inside the training step. It is PixArt-α §2.4's feature extraction (``features.py``) run per step
instead of once beforehand, with the same frozen networks and the same arithmetic, so a run that streams images
trains on what the caches would have held:

- latents: the codec's posterior of ``pixels_to_model(image)``, sampled as the cached path samples its stored
  posterior, ``x0 = (mean + std·ε)·scale_factor`` (:func:`~diffusion.data.dataset.sample_latent`; PixArt-Σ's
  on-the-fly training draws ``posterior.sample()`` the same way);
- captions: ``TextEncoder.encode`` (cleaning, padding to ``max_length``, mask) as extraction runs it;
- control (ControlNet, PixArt-δ §4): the batch's ``control`` image, or an annotator's map of the image made the
  3-channel picture ``to_control_image`` gives (extraction's ``annotator`` path), encoded by the same codec and
  sampled like the latents (the cached control latents are [mean ‖ std] posteriors, sampled by ``prepare_batch``).

The noise is drawn in the cached path's order (latents, then control), so with the same generator state and the same
images both paths give the same prepared batch.
"""

import torch
from torch import nn

from diffusion.data.annotators import control_pixels
from diffusion.data.dataset import sample_latent
from diffusion.data.images import pixels_to_model


class BatchEncoder:
    """Frozen codec + text encoder (+ annotator) turning image batches into prepared batches.

    Args:
        codec: ``encode(images (B, 3, H, W) in [-1, 1]) -> (mean, std)`` each (B, C, h, w) (``PixelCodec``,
            ``AutoencoderKLCodec``), already on ``device`` in its inference dtype.
        text_encoder: a :class:`~diffusion.data.text_encoder.TextEncoder` (its weights may be FSDP-sharded).
        scale_factor: the codec's latent scale (``x0`` is scaled by it, as ``prepare_batch`` scales cached ones).
        device: where the batch goes (the trained model's device).
        annotator: control maps of the images (``HEDAnnotator``, ``CannyAnnotator``: (B, 3, H, W) in [0, 1] ->
            (B, 1, H, W) in [0, 1]); None: a batch's ``control`` image is the control, when it has one.
    """

    def __init__(
        self,
        codec: nn.Module,
        text_encoder,
        scale_factor: float,
        device: torch.device | str,
        annotator: nn.Module | None = None,
    ) -> None:
        self.codec, self.text_encoder, self.annotator = codec, text_encoder, annotator
        self.scale_factor, self.device = float(scale_factor), torch.device(device)

    @torch.no_grad()
    def __call__(self, batch: dict, generator: torch.Generator | None = None) -> dict:
        """A collated image batch (``image`` (B, 3, h, w) uint8, ``prompt``, ``img_hw`` (B, 2), ``aspect_ratio``
        (B, 1)[, ``control`` (B, 3, h, w) uint8]) -> ``{x0 (B, C, h/d, w/d), y (B, 1, L, C_text), y_mask (B, L) long,
        data_info {img_hw, aspect_ratio}, prompt[, c]}`` on ``device``; the latents' noise from ``generator``."""
        images = pixels_to_model(batch["image"].to(self.device, non_blocking=True))
        prepared = {"x0": sample_latent(*self.codec.encode(images), self.scale_factor, generator)}
        y, y_mask = self.text_encoder.encode(list(batch["prompt"]))
        prepared.update(
            y=y.float().to(self.device),
            y_mask=y_mask.long().to(self.device),
            data_info={
                "img_hw": batch["img_hw"].float().to(self.device),
                "aspect_ratio": batch["aspect_ratio"].float().to(self.device),
            },
            prompt=list(batch["prompt"]),
        )
        if self.annotator is not None:
            control = control_pixels(self.annotator, images)
        elif "control" in batch:
            control = pixels_to_model(batch["control"].to(self.device, non_blocking=True))
        else:
            return prepared
        prepared["c"] = sample_latent(*self.codec.encode(control), self.scale_factor, generator)
        return prepared
