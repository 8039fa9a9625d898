"""CLIP score (PixArt-δ §5 and PixArt-α report it next to FID): text-image agreement of generated samples,
``100 · cos(E_image, E_text)`` of a transformers ``CLIPModel`` loaded from a local folder (e.g. a download of
``openai/clip-vit-large-patch14``), reported as torchmetrics' ``CLIPScore`` does: ``max(mean_i 100 · cos_i, 0)``.

Images go through the folder's own ``CLIPProcessor`` (resize, centre crop, CLIP normalisation) exactly as torchmetrics
feeds them; captions longer than the text model's positions are truncated by the tokenizer (keeping the end token
that CLIP pools at). On the embedded 32×32 data the prompt-attribute accuracy is the stand-in (no CLIP here).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
from torch import nn
from tqdm import tqdm

CLIP_HINT = (
    "a local CLIP folder (config.json, weights, tokenizer and preprocessor files), e.g. on a machine with internet "
    "`huggingface-cli download openai/clip-vit-large-patch14 --local-dir PATH`; nothing is downloaded here"
)


class CLIPScorer(nn.Module):
    """A CLIP model and its processor; :meth:`scores` gives per-pair ``100 · cos``.

    Args:
        model: ``transformers.CLIPModel`` (eval mode is set).
        processor: the matching ``transformers.CLIPProcessor``.
    """

    def __init__(self, model: nn.Module, processor) -> None:
        super().__init__()
        self.model, self.processor = model.eval().requires_grad_(False), processor
        self.max_length = model.config.text_config.max_position_embeddings

    @classmethod
    def from_folder(cls, path: str | Path | None, device: str | torch.device = "cpu") -> CLIPScorer:
        """Load ``CLIPModel`` + ``CLIPProcessor`` from the local folder ``path`` (FileNotFoundError naming it)."""
        from transformers import CLIPModel, CLIPProcessor

        if path is None or not (Path(path) / "config.json").is_file():
            raise FileNotFoundError(f"CLIP model folder not found or without config.json: {path}; pass {CLIP_HINT}")
        return cls(CLIPModel.from_pretrained(str(path)), CLIPProcessor.from_pretrained(str(path))).to(device)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @torch.no_grad()
    def scores(self, images: torch.Tensor, prompts: Sequence[str]) -> torch.Tensor:
        """``100 · cos`` (N,) between uint8 images (N, 3, H, W) and their N prompts (not clamped)."""
        if images.shape[0] != len(prompts):
            raise ValueError(f"{images.shape[0]} images but {len(prompts)} prompts")
        pixels = self.processor(images=list(images), return_tensors="pt")["pixel_values"].to(self.device)
        text = self.processor(
            text=list(prompts), return_tensors="pt", padding=True, truncation=True, max_length=self.max_length
        )
        image_features = _as_tensor(self.model.get_image_features(pixel_values=pixels))
        text_features = _as_tensor(
            self.model.get_text_features(
                input_ids=text["input_ids"].to(self.device), attention_mask=text["attention_mask"].to(self.device)
            )
        )
        image_features = image_features / image_features.norm(dim=-1, keepdim=True)
        text_features = text_features / text_features.norm(dim=-1, keepdim=True)
        return 100 * (image_features * text_features).sum(-1).float().cpu()

    def score(
        self, images: torch.Tensor, prompts: Sequence[str], batch_size: int = 64, progress: bool = True
    ) -> dict[str, float]:
        """``{"clip_score": max(mean 100·cos, 0) (torchmetrics' CLIPScore), "clip_score_std", "num"}``."""
        per_image = torch.cat(
            [
                self.scores(images[i : i + batch_size], prompts[i : i + batch_size])
                for i in tqdm(range(0, len(prompts), batch_size), desc="CLIP score", disable=not progress)
            ]
        )
        return {
            "clip_score": max(per_image.mean().item(), 0.0),
            "clip_score_std": per_image.std().item() if len(per_image) > 1 else 0.0,
            "num": len(per_image),
        }


def _as_tensor(features) -> torch.Tensor:
    # transformers 5 may return a model output with the projected embeddings in pooler_output
    return features if isinstance(features, torch.Tensor) else features.pooler_output
