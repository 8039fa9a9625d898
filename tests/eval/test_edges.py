"""Edge F1 (diffusion/eval/edges.py) on hand-made maps, and its ceiling on the embedded default's real images."""

import numpy as np
import pytest
import torch

from diffusion.data.embedded import render
from diffusion.eval.edges import edge_f1, generated_edge_f1


def _square(offset: int = 0, size: int = 32) -> torch.Tensor:
    m = torch.zeros(1, 1, size, size, dtype=torch.bool)
    lo, hi = 8 + offset, 20 + offset
    m[..., lo, lo : hi + 1] = m[..., hi, lo : hi + 1] = m[..., lo : hi + 1, lo] = m[..., lo : hi + 1, hi] = True
    return m


def test_perfect_shifted_and_empty_maps():
    target = _square()
    assert edge_f1(target, target, tolerance=0).item() == 1.0
    shifted = _square(offset=1)
    assert edge_f1(shifted, target, tolerance=1).item() == 1.0  # every pixel within 1 px of the other map
    strict = edge_f1(shifted, target, tolerance=0).item()
    # at 0 px only the crossings of the two outlines coincide: 2 of 48 pixels each way
    assert strict == pytest.approx(2 / 48)
    far = _square(offset=6)
    assert edge_f1(far, target, tolerance=2).item() < 0.3
    empty = torch.zeros_like(target)
    assert edge_f1(empty, target).item() == 0.0 and edge_f1(target, empty).item() == 0.0
    assert edge_f1(empty, empty).item() == 1.0
    # precision and recall differ: half the outline found, nothing spurious -> P = 1, R ~ 0.5, F1 = 2/3-ish
    half = target.clone()
    half[..., 14:, :] = False
    p, r = 1.0, half.sum().item() / target.sum().item()
    assert edge_f1(half, target, tolerance=0).item() == pytest.approx(2 * p * r / (p + r))
    with pytest.raises(ValueError, match="tolerance"):
        edge_f1(target, target, tolerance=-1)
    with pytest.raises(ValueError, match="edge maps"):
        edge_f1(target, target[..., :16])


def test_canny_on_real_embedded_images_recovers_their_edge_maps():
    """The metric's ceiling: Canny on the rendered image against the exact edge map it was drawn with."""
    images, edges = [], []
    for shape in ("circle", "square", "triangle", "cross"):
        attrs = dict(shape=shape, color="red", size="large", position="center", background="white")
        image, edge = render(attrs, 32)
        images.append(torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1))
        edges.append(torch.from_numpy(edge)[None])
    f1 = generated_edge_f1(torch.stack(images), torch.stack(edges), tolerance=1)
    assert f1.min() > 0.9, f1
    flat = torch.full((4, 3, 32, 32), 128, dtype=torch.uint8)  # an image with no edges at all
    assert generated_edge_f1(flat, torch.stack(edges)).max() == 0.0
