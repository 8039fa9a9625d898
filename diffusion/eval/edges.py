"""Edge fidelity of controlled generation (PixArt-delta §4 shows it only as pictures; this measures it).

F1 between a control edge map and the edges OpenCV Canny finds on the generated image, each edge pixel counting as
matched when an edge pixel of the other map lies within ``tolerance`` pixels (Chebyshev distance, i.e. inside a
(2 tolerance + 1)^2 window): precision = matched generated edges / generated edges, recall = matched control edges /
control edges, F1 their harmonic mean. Two empty maps agree (F1 = 1); one empty map gives F1 = 0.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from diffusion.data.annotators import CannyAnnotator


def _dilate(edges: torch.Tensor, tolerance: int) -> torch.Tensor:
    """(B, 1, H, W) bool -> pixels within ``tolerance`` of an edge pixel."""
    if tolerance == 0:
        return edges
    return F.max_pool2d(edges.float(), 2 * tolerance + 1, stride=1, padding=tolerance) > 0


def edge_f1(predicted: torch.Tensor, target: torch.Tensor, tolerance: int = 1) -> torch.Tensor:
    """Per-image edge F1, (B,).

    Args:
        predicted, target: edge maps (B, 1, H, W) or (B, H, W), nonzero = edge (bool, {0, 1} or 0..255).
        tolerance: matching distance in pixels (>= 0).
    """
    if tolerance < 0:
        raise ValueError(f"tolerance must be >= 0, got {tolerance}")
    pred, tgt = (m[:, None] if m.ndim == 3 else m for m in (predicted, target))
    if pred.ndim != 4 or pred.shape != tgt.shape or pred.shape[1] != 1:
        raise ValueError(f"edge maps must both be (B, 1, H, W), got {tuple(predicted.shape)}, {tuple(target.shape)}")
    pred, tgt = pred != 0, tgt != 0
    n_pred, n_tgt = pred.sum((1, 2, 3)).float(), tgt.sum((1, 2, 3)).float()
    precision = (pred & _dilate(tgt, tolerance)).sum((1, 2, 3)).float() / n_pred.clamp(min=1)
    recall = (tgt & _dilate(pred, tolerance)).sum((1, 2, 3)).float() / n_tgt.clamp(min=1)
    f1 = 2 * precision * recall / (precision + recall).clamp(min=1e-12)
    both_empty = (n_pred == 0) & (n_tgt == 0)
    return torch.where(both_empty, torch.ones_like(f1), f1)


def generated_edge_f1(images: torch.Tensor, control_edges: torch.Tensor, tolerance: int = 1) -> torch.Tensor:
    """Edge F1 of generated uint8 images (B, 3, H, W) against the control edge maps (B, 1 | 3, H, W), (B,)."""
    found = CannyAnnotator()(images.float() / 255.0)  # (B, 1, H, W) in {0, 1}
    target = control_edges if control_edges.shape[1] == 1 else control_edges.float().mean(1, keepdim=True)
    return edge_f1(found, target > (target.max() / 2 if target.dtype == torch.uint8 else 0.5), tolerance)
