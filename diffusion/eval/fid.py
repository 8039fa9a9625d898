"""Fréchet distance between feature Gaussians (FID; PixArt-δ §3.3 Fig. 2 and §5 compare LCM with the teacher by it).

``FID = ||mu1 - mu2||² + Tr(S1 + S2 - 2 (S1 S2)^½)`` over features of a feature network
(:func:`build_feature_extractor`: ``embedded`` attribute-net features by default, or a local InceptionV3).
Statistics files are ``.npz`` with ``mu`` (D,), ``sigma`` (D, D) and the ``features`` name they were computed with.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import numpy as np
import torch
from scipy import linalg
from torch import nn
from tqdm import tqdm

from diffusion.eval.extractors import FEATURE_EXTRACTORS, build_feature_extractor
from diffusion.eval.images import FolderReport, iter_image_batches, list_images

__all__ = [
    "FEATURE_EXTRACTORS",
    "build_feature_extractor",
    "compute_statistics",
    "extract_features",
    "fid_between",
    "folder_features",
    "frechet_distance",
    "load_statistics",
    "save_statistics",
    "statistics_of",
]


def compute_statistics(features: np.ndarray | torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """Mean (D,) and unbiased covariance (D, D), float64, of features (N, D) with N ≥ 2."""
    features = np.asarray(features.detach().cpu() if isinstance(features, torch.Tensor) else features, np.float64)
    if features.ndim != 2 or features.shape[0] < 2:
        raise ValueError(f"need features of shape (N >= 2, D), got {features.shape}")
    return features.mean(axis=0), np.cov(features, rowvar=False)


def _psd_sqrt(sigma: np.ndarray) -> np.ndarray:
    """Symmetric square root of a covariance (eigenvalues below 0 from round-off are clipped to 0)."""
    w, v = linalg.eigh(sigma)
    return (v * np.sqrt(np.clip(w, 0, None))) @ v.T


def frechet_distance(mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray) -> float:
    """Fréchet distance ``||mu1 - mu2||² + Tr(S1) + Tr(S2) - 2 Tr((S1 S2)^½)`` between N(mu1, S1) and N(mu2, S2).

    ``Tr((S1 S2)^½)`` is the sum of the square roots of the eigenvalues of ``S1^½ S2 S1^½`` (symmetric PSD, the same
    eigenvalues as ``S1 S2``). This equals pytorch-fid's ``scipy.linalg.sqrtm`` trace whenever that is well defined,
    and stays exact for the rank-deficient covariances of fewer images than feature dimensions (2048 for Inception),
    where pytorch-fid's sqrtm fails with an "imaginary component" error; torchmetrics uses the same eigenvalue form.
    Non-finite statistics are a ValueError.
    """
    mu1, mu2 = np.atleast_1d(np.asarray(mu1, np.float64)), np.atleast_1d(np.asarray(mu2, np.float64))
    sigma1, sigma2 = np.atleast_2d(np.asarray(sigma1, np.float64)), np.atleast_2d(np.asarray(sigma2, np.float64))
    if mu1.shape != mu2.shape or sigma1.shape != sigma2.shape or sigma1.shape != (mu1.shape[0],) * 2:
        raise ValueError(
            f"statistics differ in shape: mu {mu1.shape} vs {mu2.shape}, sigma {sigma1.shape} vs {sigma2.shape}"
        )
    if not all(np.isfinite(a).all() for a in (mu1, mu2, sigma1, sigma2)):
        raise ValueError("non-finite values in the FID statistics (NaN/inf features?)")
    diff = mu1 - mu2
    root1 = _psd_sqrt(sigma1)
    product = root1 @ sigma2 @ root1
    eigenvalues = linalg.eigvalsh((product + product.T) / 2)
    trace_covmean = np.sqrt(np.clip(eigenvalues, 0, None)).sum()
    return float(diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2 * trace_covmean)


@torch.no_grad()
def extract_features(
    extractor: nn.Module, batches: Iterable[torch.Tensor], total: int | None = None, progress: bool = True
) -> np.ndarray:
    """Run ``extractor`` over uint8 (B,3,H,W) ``batches`` → float64 features (N, D), with a tqdm bar over images."""
    out = []
    with tqdm(
        total=total, unit="img", desc=f"{getattr(extractor, 'name', 'features')} features", disable=not progress
    ) as bar:
        for batch in batches:
            out.append(extractor(batch).double().cpu().numpy())
            bar.update(batch.shape[0])
    if not out:
        raise ValueError("no images to extract features from")
    return np.concatenate(out)


def folder_features(
    extractor: nn.Module, source: str | Path, batch_size: int = 64, num: int | None = None, progress: bool = True
) -> tuple[np.ndarray, FolderReport]:
    """Features (N, D) of the first ``num`` (all by default) images of a folder or dataset root
    (:func:`~diffusion.eval.images.list_images`); unreadable files are skipped and counted in the report."""
    paths = list_images(source)[:num]
    report = FolderReport()
    batches = iter_image_batches(paths, batch_size, size=extractor.image_size, report=report)
    return extract_features(extractor, batches, total=len(paths), progress=progress), report


def save_statistics(path: str | Path, mu: np.ndarray, sigma: np.ndarray, features: str, num: int) -> Path:
    """Write ``mu``, ``sigma``, the extractor name ``features`` and the image count ``num`` to ``path`` (.npz)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez(path, mu=mu, sigma=sigma, features=np.array(features), num=np.array(num))
    return path


def load_statistics(path: str | Path) -> tuple[np.ndarray, np.ndarray, str | None]:
    """``(mu, sigma, features name or None)`` from an ``.npz`` with at least ``mu`` and ``sigma``."""
    with np.load(path) as data:
        return data["mu"], data["sigma"], str(data["features"]) if "features" in data else None


def statistics_of(
    source: str | Path, extractor: nn.Module, batch_size: int = 64, num: int | None = None, progress: bool = True
) -> tuple[np.ndarray, np.ndarray, FolderReport | None]:
    """``(mu, sigma, report)`` of an ``.npz`` statistics file (report None; its features must be ``extractor``'s)
    or of an image folder / dataset root."""
    source = Path(source)
    if source.suffix == ".npz":
        mu, sigma, name = load_statistics(source)
        if name is not None and name != extractor.name:
            raise ValueError(f"{source} holds {name!r} statistics, not {extractor.name!r}")
        return mu, sigma, None
    features, report = folder_features(extractor, source, batch_size, num, progress)
    mu, sigma = compute_statistics(features)
    return mu, sigma, report


def fid_between(
    a: str | Path, b: str | Path, extractor: nn.Module, batch_size: int = 64, progress: bool = True
) -> tuple[float, list[FolderReport | None]]:
    """FID between two sources (image folders, dataset roots or ``.npz`` statistics) and their folder reports."""
    mu1, sigma1, report1 = statistics_of(a, extractor, batch_size, progress=progress)
    mu2, sigma2, report2 = statistics_of(b, extractor, batch_size, progress=progress)
    return frechet_distance(mu1, sigma1, mu2, sigma2), [report1, report2]
