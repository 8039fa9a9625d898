"""Multi-scale aspect-ratio buckets (PixArt-α multi-scale training, reused by PixArt-δ at 1024 px, paper §3) and
the resolution binning of sampling.

The official ``ASPECT_RATIO_1024`` table has 40 buckets from h/w = 0.25 ([512, 2048]) to 4.0 ([2048, 512]), sizes
multiples of 64 with about 1024² pixels; the 512 and 256 tables are the same table scaled by 1/2 and 1/4, and
PixArt-Σ's ``ASPECT_RATIO_2048`` (its 2K-MS model) by 2. An image goes to the bucket whose ratio key is closest to its
h/w, and every batch holds one bucket (facts §6).

Resolution binning (diffusers' ``PixArtAlphaPipeline`` / ``PixArtSigmaPipeline`` ``use_resolution_binning``, one
implementation here for α and Σ): a requested size is sampled at the closest bucket of :func:`binning_table` (the
33-entry ``ASPECT_RATIO_{256,512,1024}_BIN`` tables, the official ``*_TEST`` ones; all 40 at 2048, as
``PixArtSigmaPipeline``), and the decoded image is resized to cover the request and centre-cropped to it
(:func:`resize_and_crop`).
"""

import warnings
from collections.abc import Iterator, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from diffusion.registry import DATA_SAMPLERS

# ratio key (h/w) -> (height, width) in pixels, official values.
ASPECT_RATIO_1024: dict[str, tuple[int, int]] = {
    "0.25": (512, 2048), "0.26": (512, 1984), "0.27": (512, 1920), "0.28": (512, 1856),
    "0.32": (576, 1792), "0.33": (576, 1728), "0.35": (576, 1664), "0.4": (640, 1600),
    "0.42": (640, 1536), "0.48": (704, 1472), "0.5": (704, 1408), "0.52": (704, 1344),
    "0.57": (768, 1344), "0.6": (768, 1280), "0.68": (832, 1216), "0.72": (832, 1152),
    "0.78": (896, 1152), "0.82": (896, 1088), "0.88": (960, 1088), "0.94": (960, 1024),
    "1.0": (1024, 1024), "1.07": (1024, 960), "1.13": (1088, 960), "1.21": (1088, 896),
    "1.29": (1152, 896), "1.38": (1152, 832), "1.46": (1216, 832), "1.67": (1280, 768),
    "1.75": (1344, 768), "2.0": (1408, 704), "2.09": (1472, 704), "2.4": (1536, 640),
    "2.5": (1600, 640), "2.89": (1664, 576), "3.0": (1728, 576), "3.11": (1792, 576),
    "3.62": (1856, 512), "3.75": (1920, 512), "3.88": (1984, 512), "4.0": (2048, 512),
}  # fmt: skip


def aspect_ratio_table(resolution: int) -> dict[str, tuple[int, int]]:
    """The 1024 table scaled to ``resolution`` (512 → ASPECT_RATIO_512, 256 → ASPECT_RATIO_256, 32 → tiny)."""
    if any((side * resolution) % 1024 for size in ASPECT_RATIO_1024.values() for side in size):
        raise ValueError(f"resolution {resolution} does not scale the 1024 buckets to whole pixels")
    return {key: (h * resolution // 1024, w * resolution // 1024) for key, (h, w) in ASPECT_RATIO_1024.items()}


# PixArt-Σ 2K-MS (official diffusion/data/datasets/utils.py; equal to ASPECT_RATIO_1024 scaled by 2).
ASPECT_RATIO_2048: dict[str, tuple[int, int]] = {
    "0.25": (1024, 4096), "0.26": (1024, 3968), "0.27": (1024, 3840), "0.28": (1024, 3712),
    "0.32": (1152, 3584), "0.33": (1152, 3456), "0.35": (1152, 3328), "0.4": (1280, 3200),
    "0.42": (1280, 3072), "0.48": (1408, 2944), "0.5": (1408, 2816), "0.52": (1408, 2688),
    "0.57": (1536, 2688), "0.6": (1536, 2560), "0.68": (1664, 2432), "0.72": (1664, 2304),
    "0.78": (1792, 2304), "0.82": (1792, 2176), "0.88": (1920, 2176), "0.94": (1920, 2048),
    "1.0": (2048, 2048), "1.07": (2048, 1920), "1.13": (2176, 1920), "1.21": (2176, 1792),
    "1.29": (2304, 1792), "1.38": (2304, 1664), "1.46": (2432, 1664), "1.67": (2560, 1536),
    "1.75": (2688, 1536), "2.0": (2816, 1408), "2.09": (2944, 1408), "2.4": (3072, 1280),
    "2.5": (3200, 1280), "2.89": (3328, 1152), "3.0": (3456, 1152), "3.11": (3584, 1152),
    "3.62": (3712, 1024), "3.75": (3840, 1024), "3.88": (3968, 1024), "4.0": (4096, 1024),
}  # fmt: skip
ASPECT_RATIO_512 = aspect_ratio_table(512)
ASPECT_RATIO_256 = aspect_ratio_table(256)
TABLES = {
    "ASPECT_RATIO_2048": ASPECT_RATIO_2048,
    "ASPECT_RATIO_1024": ASPECT_RATIO_1024,
    "ASPECT_RATIO_512": ASPECT_RATIO_512,
    "ASPECT_RATIO_256": ASPECT_RATIO_256,
}
# Ratio keys the sampling-time tables leave out (diffusers' 33-entry ASPECT_RATIO_{256,512,1024}_BIN, the official
# *_TEST tables); PixArtSigmaPipeline bins a 2048 model with all 40 buckets of ASPECT_RATIO_2048.
NOT_BINNED = ("0.26", "0.27", "2.89", "3.11", "3.62", "3.75", "3.88")


def resolve_table(table: str | int | dict[str, tuple[int, int]]) -> dict[str, tuple[int, int]]:
    """Accept a table, its name (``'ASPECT_RATIO_1024'``) or a resolution (``1024``, ``32``)."""
    if isinstance(table, dict):
        return table
    if isinstance(table, str):
        if table not in TABLES:
            raise ValueError(f"unknown aspect-ratio table {table!r}; expected one of {sorted(TABLES)}")
        return TABLES[table]
    return aspect_ratio_table(int(table))


def closest_bucket(
    height: float, width: float, table: str | int | dict[str, tuple[int, int]]
) -> tuple[str, tuple[int, int]]:
    """The bucket whose ratio key is closest to height/width: (key, (bucket_h, bucket_w))."""
    table = resolve_table(table)
    ratio = height / width
    key = min(table, key=lambda k: abs(float(k) - ratio))
    return key, table[key]


def binning_table(resolution: int, multiple: int = 1) -> dict[str, tuple[int, int]]:
    """The buckets a request is binned to for a model of base ``resolution`` px: all 40 of ``ASPECT_RATIO_2048`` at
    2048, else the 33 of the 1024 table scaled to ``resolution`` (diffusers' ``ASPECT_RATIO_{256,512,1024}_BIN`` at
    those sizes), keeping only buckets whose sides are multiples of ``multiple`` (codec downsample x patch size:
    every bucket at the real sizes; it matters for tiny models)."""
    table = ASPECT_RATIO_2048 if resolution == 2048 else aspect_ratio_table(resolution)
    if resolution != 2048:
        table = {k: hw for k, hw in table.items() if k not in NOT_BINNED}
    table = {k: (h, w) for k, (h, w) in table.items() if h % multiple == 0 and w % multiple == 0}
    if not table:
        raise ValueError(f"no bucket at resolution {resolution} has sides divisible by {multiple}")
    return table


def resize_and_crop(images: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Images (B, C, h, w) float -> (B, C, height, width): bilinearly resized to cover the target keeping the aspect
    ratio, then centre-cropped (diffusers' ``VaeImageProcessor.resize_and_crop_tensor``, the last step of binning)."""
    h, w = images.shape[-2:]
    if (h, w) == (height, width):
        return images
    ratio = max(height / h, width / w)
    resized_h, resized_w = int(h * ratio), int(w * ratio)
    images = F.interpolate(images, size=(resized_h, resized_w), mode="bilinear", align_corners=False)
    top, left = (resized_h - height) // 2, (resized_w - width) // 2
    return images[..., top : top + height, left : left + width]


@DATA_SAMPLERS.register_module()
class AspectRatioBatchSampler:
    """Batches of dataset indices that all fall in one aspect-ratio bucket, split across ranks.

    Each epoch (seeded by ``seed + epoch``) shuffles the indices inside every bucket, cuts them into batches, shuffles
    the batch order, and deals batch ``j`` to rank ``j % world_size``. Every rank gets the same number of batches, so
    DDP ranks stay in step: with ``drop_last`` incomplete batches and the uneven tail are dropped; without it, the
    last batch of a bucket may be short and the list is padded by repeating its first batches.
    ``dropped_per_epoch`` says how many items an epoch never serves (the same number every epoch); a warning names
    it when it is not zero, since on a small set it can be most of the data.

    Args:
        dataset_ratios: h/w of every dataset item (``FeatureDataset.aspect_ratios``).
        batch_size: per-rank batch size.
        table: bucket table, its name or a resolution.
    """

    def __init__(
        self,
        dataset_ratios: Sequence[float],
        batch_size: int,
        table: str | int | dict[str, tuple[int, int]] = "ASPECT_RATIO_1024",
        drop_last: bool = True,
        shuffle: bool = True,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
    ) -> None:
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} outside world_size {world_size}")
        self.table = resolve_table(table)
        keys = list(self.table)
        bucket_ratios = np.array([float(k) for k in keys])
        nearest = np.abs(np.asarray(dataset_ratios, dtype=float)[:, None] - bucket_ratios[None]).argmin(1)
        self.buckets = {keys[b]: np.flatnonzero(nearest == b) for b in np.unique(nearest)}
        self.batch_size, self.drop_last, self.shuffle = batch_size, drop_last, shuffle
        self.seed, self.rank, self.world_size = seed, rank, world_size
        self.epoch = 0
        self.num_items = len(dataset_ratios)
        if self.dropped_per_epoch:
            warnings.warn(self.describe())

    @property
    def dropped_per_epoch(self) -> int:
        """Items of the dataset no rank sees in an epoch: the partial batch of every bucket and, so that all ranks
        get the same number of batches, the last ``total % world_size`` full batches (drop_last only)."""
        if not self.drop_last:
            return 0
        sizes = [len(v) for v in self.buckets.values()]
        full = sum(n // self.batch_size for n in sizes)
        return sum(n % self.batch_size for n in sizes) + (full % self.world_size) * self.batch_size

    def describe(self) -> str:
        """One line: batches per rank and what drop_last drops."""
        text = (
            f"AspectRatioBatchSampler: {self.num_items} items in {len(self.buckets)} bucket(s), "
            f"{len(self)} batches of {self.batch_size} per rank x {self.world_size} rank(s) per epoch"
        )
        if self.dropped_per_epoch:
            text += (
                f"; drop_last leaves out {self.dropped_per_epoch} of {self.num_items} items every epoch "
                "(partial batches per bucket and the uneven tail; a smaller batch size or drop_last=False keeps them)"
            )
        return text

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def _all_batches(self) -> list[list[int]]:
        rng = np.random.default_rng(self.seed + self.epoch)
        batches = []
        for key in sorted(self.buckets, key=float):
            indices = self.buckets[key]
            if self.shuffle:
                indices = rng.permutation(indices)
            for start in range(0, len(indices), self.batch_size):
                batch = indices[start : start + self.batch_size].tolist()
                if len(batch) == self.batch_size or not self.drop_last:
                    batches.append(batch)
        if self.shuffle:
            batches = [batches[i] for i in rng.permutation(len(batches))]
        return batches

    def _num_batches(self, total: int) -> int:
        return total // self.world_size if self.drop_last else -(-total // self.world_size)

    def __iter__(self) -> Iterator[list[int]]:
        batches = self._all_batches()
        per_rank = self._num_batches(len(batches))
        if batches:
            batches = (batches * (1 + self.world_size))[: per_rank * self.world_size]
        yield from batches[self.rank :: self.world_size]

    def __len__(self) -> int:
        sizes = [len(v) for v in self.buckets.values()]
        if self.drop_last:
            total = sum(n // self.batch_size for n in sizes)
        else:
            total = sum(-(-n // self.batch_size) for n in sizes)
        return self._num_batches(total)
