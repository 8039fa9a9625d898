"""diffusion/eval/fid.py and extractors: Fréchet distance invariants, statistics files, folders, feature networks."""

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from diffusion.data.embedded import make_embedded_data
from diffusion.eval.fid import (
    compute_statistics,
    folder_features,
    frechet_distance,
    load_statistics,
    save_statistics,
    statistics_of,
)
from diffusion.eval.images import list_images
from tests.eval.helpers import render_folder


class MeanColour(nn.Module):
    """Stand-in extractor: per-channel mean and std of the image, (N, 6)."""

    name, dim, image_size = "stub", 6, 32

    def forward(self, images):
        x = images.float() / 255
        return torch.cat([x.mean((2, 3)), x.std((2, 3))], 1)


def _random_cov(rng, d):
    a = rng.normal(size=(d, d))
    return a @ a.T / d + 0.1 * np.eye(d)


def test_fid_of_a_set_with_itself_is_zero():
    features = np.random.default_rng(0).normal(size=(300, 16))
    mu, sigma = compute_statistics(features)
    assert mu.dtype == sigma.dtype == np.float64 and sigma.shape == (16, 16)
    assert abs(frechet_distance(mu, sigma, mu, sigma)) < 1e-6


def test_diagonal_gaussians_match_closed_form():
    rng = np.random.default_rng(1)
    mu1, mu2 = rng.normal(size=8), rng.normal(size=8)
    var1, var2 = rng.uniform(0.1, 3, size=8), rng.uniform(0.1, 3, size=8)
    expected = np.sum((mu1 - mu2) ** 2) + np.sum(var1 + var2 - 2 * np.sqrt(var1 * var2))
    got = frechet_distance(mu1, np.diag(var1), mu2, np.diag(var2))
    assert got == pytest.approx(expected, rel=1e-8)


def test_symmetric():
    rng = np.random.default_rng(2)
    mu1, mu2, s1, s2 = rng.normal(size=10), rng.normal(size=10), _random_cov(rng, 10), _random_cov(rng, 10)
    assert frechet_distance(mu1, s1, mu2, s2) == pytest.approx(frechet_distance(mu2, s2, mu1, s1), rel=1e-7)


def test_shifting_features_increases_fid():
    features = np.random.default_rng(3).normal(size=(500, 6))
    mu, sigma = compute_statistics(features)
    fids = [frechet_distance(mu, sigma, *compute_statistics(features + shift)) for shift in (0.1, 0.5, 2.0)]
    assert fids[0] < fids[1] < fids[2]
    assert fids[2] == pytest.approx(6 * 2.0**2, rel=1e-6)  # same covariance: only ||mu1 - mu2||² remains


def test_singular_covariances_give_a_finite_distance():
    features = np.random.default_rng(4).normal(size=(5, 20))  # N < D: rank-deficient covariance
    mu, sigma = compute_statistics(features)
    mu2, sigma2 = compute_statistics(features[:, ::-1] * 2)
    fid = frechet_distance(mu, sigma, mu2, sigma2)
    assert np.isfinite(fid) and fid > 0


def test_compute_statistics_needs_two_samples():
    with pytest.raises(ValueError, match="N >= 2"):
        compute_statistics(np.zeros((1, 4)))


def test_unreadable_files_are_skipped_and_counted(tmp_path):
    render_folder(tmp_path, 4)
    (tmp_path / "bad.png").write_bytes(b"not a png")
    (tmp_path / "empty.jpg").write_bytes(b"")
    Image.new("RGB", (64, 48), (10, 20, 30)).save(tmp_path / "big.jpg")  # another size: resized to 32
    features, report = folder_features(MeanColour(), tmp_path, batch_size=2, progress=False)
    assert features.shape == (5, 6) and report.read == 5
    assert sorted(p.rsplit("/", 1)[-1] for p in report.skipped) == ["bad.png", "empty.jpg"]
    assert "2 unreadable" in report.summary()


def test_dataset_root_lists_its_images_not_its_edges(tmp_path):
    make_embedded_data(tmp_path, num=6)
    paths = list_images(tmp_path)
    assert len(paths) == 6 and all(p.parent.name == "images" for p in paths)


def test_statistics_file_round_trip_and_feature_check(tmp_path):
    render_folder(tmp_path / "imgs", 6)
    mu, sigma, report = statistics_of(tmp_path / "imgs", MeanColour(), progress=False)
    assert report.read == 6
    save_statistics(tmp_path / "ref.npz", mu, sigma, "stub", 6)
    mu2, sigma2, name = load_statistics(tmp_path / "ref.npz")
    assert name == "stub" and np.array_equal(mu, mu2) and np.array_equal(sigma, sigma2)
    other = MeanColour()
    other.name = "inception"
    with pytest.raises(ValueError, match="'stub' statistics"):
        statistics_of(tmp_path / "ref.npz", other)


def test_frechet_distance_matches_scipy_sqrtm_on_random_features():
    """pytorch-fid's formula with scipy.linalg.sqrtm, on well-conditioned statistics of random features."""
    from scipy import linalg

    rng = np.random.default_rng(5)
    a = rng.normal(size=(400, 12)) @ rng.normal(size=(12, 12))
    b = rng.normal(0.3, 1.5, size=(400, 12)) @ rng.normal(size=(12, 12))
    (mu1, s1), (mu2, s2) = compute_statistics(a), compute_statistics(b)
    expected = np.sum((mu1 - mu2) ** 2) + np.trace(s1 + s2 - 2 * linalg.sqrtm(s1 @ s2).real)
    assert frechet_distance(mu1, s1, mu2, s2) == pytest.approx(expected, rel=1e-8)


def test_fid_grows_with_added_noise():
    rng = np.random.default_rng(6)
    features = rng.normal(size=(600, 8))
    ref = compute_statistics(features)
    fids = [
        frechet_distance(*ref, *compute_statistics(features + rng.normal(0, s, features.shape)))
        for s in (0.1, 0.5, 1.5)
    ]
    assert fids[0] < fids[1] < fids[2]


def test_non_finite_statistics_are_refused():
    mu, sigma = np.zeros(3), np.eye(3)
    with pytest.raises(ValueError, match="non-finite"):
        frechet_distance(mu, sigma, np.array([0, np.nan, 0]), sigma)
