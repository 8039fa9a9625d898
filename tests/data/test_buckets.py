"""Aspect-ratio buckets and the bucket batch sampler: single-bucket batches, disjoint ranks, epoch-seeded."""

import numpy as np
import pytest

from diffusion.data import (
    ASPECT_RATIO_256,
    ASPECT_RATIO_512,
    ASPECT_RATIO_1024,
    AspectRatioBatchSampler,
    aspect_ratio_table,
    closest_bucket,
)
from diffusion.registry import DATA_SAMPLERS


def test_official_tables():
    assert len(ASPECT_RATIO_1024) == 40
    assert ASPECT_RATIO_1024["0.25"] == (512, 2048) and ASPECT_RATIO_1024["4.0"] == (2048, 512)
    assert ASPECT_RATIO_1024["1.0"] == (1024, 1024)
    for key, (h, w) in ASPECT_RATIO_1024.items():
        assert h % 64 == 0 and w % 64 == 0
        assert abs(h / w - float(key)) < 0.06
        assert 0.75 < h * w / 1024**2 < 1.1
    assert ASPECT_RATIO_512["0.57"] == (384, 672) and ASPECT_RATIO_256["0.32"] == (144, 448)  # official values
    assert aspect_ratio_table(32)["1.0"] == (32, 32)
    with pytest.raises(ValueError, match="whole pixels"):
        aspect_ratio_table(100)


def test_closest_bucket():
    assert closest_bucket(1024, 1024, "ASPECT_RATIO_1024") == ("1.0", (1024, 1024))
    assert closest_bucket(1000, 1500, 1024) == ("0.68", (832, 1216))
    assert closest_bucket(100, 1000, ASPECT_RATIO_512) == ("0.25", (256, 1024))
    assert closest_bucket(900, 100, 256) == ("4.0", (512, 128))


def _ratios(n=203, seed=0):
    keys = [float(k) for k in ("0.5", "1.0", "1.0", "2.0", "0.25")]
    rng = np.random.default_rng(seed)
    return [keys[i] * (1 + 0.01 * rng.standard_normal()) for i in rng.integers(len(keys), size=n)]


def test_batches_are_single_bucket_and_complete():
    ratios = _ratios()
    sampler = DATA_SAMPLERS.build(
        dict(type="AspectRatioBatchSampler", dataset_ratios=ratios, batch_size=8, table=1024)
    )
    batches = list(sampler)
    assert len(batches) == len(sampler) > 0
    for batch in batches:
        assert len(batch) == 8
        assert len({closest_bucket(r, 1.0, 1024)[0] for r in np.asarray(ratios)[batch]}) == 1
    flat = [i for b in batches for i in b]
    assert len(flat) == len(set(flat))
    per_bucket = {}
    for i, r in enumerate(ratios):
        per_bucket.setdefault(closest_bucket(r, 1.0, 1024)[0], []).append(i)
    assert len(flat) == sum(len(v) // 8 * 8 for v in per_bucket.values())  # only incomplete batches dropped


@pytest.mark.parametrize("drop_last", [True, False])
def test_ranks_are_disjoint_and_cover(drop_last):
    ratios = _ratios()
    kwargs = dict(dataset_ratios=ratios, batch_size=8, drop_last=drop_last, seed=5)
    single = list(AspectRatioBatchSampler(**kwargs))
    ranks = [list(AspectRatioBatchSampler(**kwargs, rank=r, world_size=3)) for r in range(3)]
    assert len({len(r) for r in ranks}) == 1
    assert [len(AspectRatioBatchSampler(**kwargs, rank=r, world_size=3)) for r in range(3)] == [len(ranks[0])] * 3
    sets = [{i for b in r for i in b} for r in ranks]
    if drop_last:
        assert not (sets[0] & sets[1] or sets[0] & sets[2] or sets[1] & sets[2])
        assert sorted(b for r in ranks for b in r) == sorted(single[: len(single) // 3 * 3])
    else:  # every index is seen; only the padding repeats batches
        assert set.union(*sets) == set(range(len(ratios)))
        assert sum(len(r) for r in ranks) - len(single) < 3


def test_epochs_reshuffle_deterministically():
    ratios = _ratios()
    sampler = AspectRatioBatchSampler(ratios, batch_size=8, seed=1)
    epoch0 = list(sampler)
    sampler.set_epoch(1)
    epoch1 = list(sampler)
    assert epoch0 != epoch1
    assert sorted(map(sorted, epoch0)) != sorted(map(sorted, epoch1))  # new batch compositions, not only order
    again = AspectRatioBatchSampler(ratios, batch_size=8, seed=1)
    again.set_epoch(1)
    assert list(again) == epoch1
    assert list(AspectRatioBatchSampler(ratios, batch_size=8, seed=2)) != epoch0
    ordered = list(AspectRatioBatchSampler(ratios, batch_size=8, shuffle=False))
    assert all(b == sorted(b) for b in ordered)


@pytest.mark.parametrize("world_size", [1, 2, 3])
def test_dropped_items_are_counted_and_warned(world_size):
    """17 items, two buckets, batch 4: drop_last serves only whole batches; the count equals what no rank sees."""
    ratios = [1.0] * 9 + [0.5] * 8
    kwargs = dict(dataset_ratios=ratios, batch_size=4, table=1024, world_size=world_size)
    with pytest.warns(UserWarning, match=r"drop_last leaves out \d+ of 17 items every epoch"):
        samplers = [AspectRatioBatchSampler(**kwargs, rank=r) for r in range(world_size)]
    for epoch in range(3):
        seen = set()
        for sampler in samplers:
            sampler.set_epoch(epoch)
            seen |= {i for batch in sampler for i in batch}
        assert samplers[0].dropped_per_epoch == 17 - len(seen)
    assert samplers[0].dropped_per_epoch == {1: 1, 2: 1, 3: 5}[world_size]
    assert "17 items in 2 bucket(s)" in samplers[0].describe()


def test_epoch_batch_sampler_counts_dropped_items():
    from diffusion.engine.data_loop import EpochBatchSampler

    dataset = list(range(17))
    samplers = [EpochBatchSampler(dataset, 3, num_replicas=2, rank=r, seed=0) for r in range(2)]
    seen = {i for s in samplers for batch in s for i in batch}
    assert samplers[0].dropped_per_epoch == 17 - len(seen) == 5  # 8 per rank -> 2 batches of 3 -> 12 served
