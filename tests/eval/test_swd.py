"""diffusion.eval.swd on invariants: 0 for identical sets, symmetric, deterministic given a seed, rising with added
noise and with blur (on average and at the finest level), scale-appropriate (fine levels react to noise and blur, the
coarse level to a colour shift), and a set metric (the order of the images matters little)."""

import pytest
import torch

from diffusion.eval.swd import _blur, laplacian_pyramid, level_resolutions, swd

FAST = dict(patches_per_image=48, directions=64, repeats=2)


def shapes(n: int, seed: int, size: int = 32) -> torch.Tensor:
    """uint8 (n, 3, size, size): two discs of random colour, place and radius on a dark random background."""
    g = torch.Generator().manual_seed(seed)
    yy, xx = torch.meshgrid(torch.arange(size).float(), torch.arange(size).float(), indexing="ij")
    images = (torch.rand(n, 3, 1, 1, generator=g) * 0.4).expand(n, 3, size, size).clone()
    for _ in range(2):
        colour = torch.rand(n, 3, 1, 1, generator=g)
        cy, cx = torch.rand(n, 1, 1, generator=g) * size, torch.rand(n, 1, 1, generator=g) * size
        radius = 3 + torch.rand(n, 1, 1, generator=g) * size / 3
        inside = ((yy - cy) ** 2 + (xx - cx) ** 2 < radius**2)[:, None]  # (n, 1, size, size)
        images = torch.where(inside, colour, images)
    return (images * 255).round().to(torch.uint8)


@pytest.fixture(scope="module")
def sets():
    return shapes(48, 0), shapes(48, 1)


def noisy(images: torch.Tensor, sigma: float, seed: int = 5) -> torch.Tensor:
    noise = torch.randn(images.shape, generator=torch.Generator().manual_seed(seed)) * sigma
    return (images.float() + noise).clamp(0, 255).round().to(torch.uint8)


def blurred(images: torch.Tensor, times: int) -> torch.Tensor:
    x = images.float()
    for _ in range(times):
        x = _blur(x)
    return x.round().to(torch.uint8)


def test_levels_of_small_images_go_down_to_8():
    assert level_resolutions(32) == [32, 16, 8]
    assert level_resolutions(64, min_resolution=16) == [64, 32, 16]
    with pytest.raises(ValueError, match="patch"):
        level_resolutions(32, min_resolution=4)


def test_pyramid_reconstructs_the_image():
    x = shapes(2, 3).float()
    pyramid = laplacian_pyramid(x, 3)
    assert [p.shape[-1] for p in pyramid] == [32, 16, 8]
    from diffusion.eval.swd import pyr_up

    rebuilt = pyramid[-1]
    for band in reversed(pyramid[:-1]):
        rebuilt = band + pyr_up(rebuilt)
    torch.testing.assert_close(rebuilt, x)


def test_zero_for_identical_sets_and_symmetric(sets):
    a, b = sets
    assert all(v == 0 for v in swd(a, a, **FAST).values())
    ab, ba = swd(a, b, **FAST), swd(b, a, **FAST)
    assert ab.keys() == {"32", "16", "8", "avg"}
    for k in ab:
        assert ab[k] > 0
        assert ab[k] == pytest.approx(ba[k], rel=1e-5)


def test_deterministic_given_a_seed(sets):
    a, b = sets
    assert swd(a, b, seed=3, **FAST) == swd(a, b, seed=3, **FAST)
    assert swd(a, b, seed=3, **FAST) != swd(a, b, seed=4, **FAST)


def test_uint8_and_float_agree_and_sizes_may_differ(sets):
    a, b = sets
    as_float = swd(a.float() / 255, b.float() / 255, **FAST)
    for k, v in swd(a, b, **FAST).items():
        assert as_float[k] == pytest.approx(v, rel=1e-4)
    assert swd(a, b[:40], **FAST)["avg"] > 0  # unequal sets: quantiles on a common grid
    with pytest.raises(ValueError, match="same"):
        swd(a, b[:, :, :16, :16])


def test_rises_with_noise_and_with_blur(sets):
    a, b = sets
    base = swd(a, b, **FAST)["avg"]
    with_noise = [swd(a, noisy(b, s), **FAST)["avg"] for s in (8, 24, 64)]
    assert base < with_noise[0] < with_noise[1] < with_noise[2]
    with_blur = [swd(a, blurred(b, k), **FAST)["avg"] for k in (1, 3)]
    assert base < with_blur[0] < with_blur[1]


def test_scale_appropriate(sets):
    """Noise moves the finest level far more than the coarsest; a colour shift the coarsest far more than the finest
    (the same shift applied to both sets changes nothing: the normalisation is pooled)."""
    a, b = sets
    base = swd(a, b, **FAST)
    noise = swd(a, noisy(b, 24), **FAST)
    assert noise["32"] - base["32"] > 5 * abs(noise["8"] - base["8"])
    shift = torch.tensor([60.0, 0.0, -40.0])[:, None, None]
    shifted = (b.float() + shift).clamp(0, 255).to(torch.uint8)
    colour = swd(a, shifted, **FAST)
    assert colour["8"] - base["8"] > 3 * abs(colour["32"] - base["32"])
    both = swd(a.float() * 2 + 7, b.float() * 2 + 7, **FAST)  # an affine rescale of both sets
    for k, v in base.items():
        assert both[k] == pytest.approx(v, rel=1e-3)


def test_noise_and_blur_show_first_at_the_finest_level(sets):
    """Per level, not only on average: the finest level rises with every added noise level, and one blur (which
    removes the finest detail only) moves the finest level and leaves the coarsest where it was."""
    a, b = sets
    base = swd(a, b, **FAST)
    fine = [swd(a, noisy(b, s), **FAST)["32"] for s in (8, 24, 64)]
    assert base["32"] < fine[0] < fine[1] < fine[2]
    blur = swd(a, blurred(b, 1), **FAST)
    assert blur["32"] - base["32"] > 2 * base["32"]
    assert abs(blur["8"] - base["8"]) < 0.05 * base["8"]


def test_a_set_metric_the_order_of_images_matters_little(sets):
    """Patch positions are drawn per image index, so a shuffled copy of a set is not exactly 0, but far below
    another draw of the same distribution, and shuffling one of two different sets changes little."""
    a, b = sets
    perm = torch.randperm(len(a), generator=torch.Generator().manual_seed(0))
    other = swd(a, b, **FAST)["avg"]
    assert swd(a, a[perm], **FAST)["avg"] < 0.4 * other
    assert swd(a, b[perm], **FAST)["avg"] == pytest.approx(other, rel=0.15)
