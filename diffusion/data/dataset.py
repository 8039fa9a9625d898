"""Training dataset over cached features, and the batch the methods consume (PixArt-α §2.4 training data path,
reused by PixArt-δ's LCD §3 and ControlNet-Transformer §4).

An item (see docs/design.md) is ``vae_feat`` (2C, h, w) = [mean ‖ std], ``y`` (1, L, C_text), ``y_mask`` (L,) long,
the PixArtMS micro-conditions ``img_hw`` (2,) and ``aspect_ratio`` (1,) as the official datasets give them (with
multi-scale the original (h, w) from data_info.json and the bucket key, as ``InternalDataMS``; single-scale the
training size (R, R) and 1.0, as ``InternalData`` / ``InternalDataHed``, which is also what sampling an R x R image
passes), ``prompt``, ``index`` and, with ``load_control``, ``control_feat`` (2C, h, w).

Bad input: items whose cache files are missing are dropped when the dataset is built; a file that exists but cannot
be read is replaced, at load time, by the next readable item with the same latent size (so bucketed batches stay
uniform), with a warning naming the file. Both are counted in ``skipped`` / ``replaced`` / ``report()``; a file
found bad in a DataLoader worker travels back in the item's ``skipped`` field and :meth:`FeatureDataset.note_skipped`
(called by the batch stream) records it in the main process. Malformed input is an error: a missing data_info field,
two items sharing a feature name, a caption whose recorded prompt (sources.py) differs from data_info.json's (edited,
not re-extracted), a cache made with another ``max_length``, or a cache array of the wrong shape or
caption width raises ValueError naming the file and the field, shape or config key.
"""

import warnings
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset, get_worker_info

from diffusion.data.buckets import closest_bucket
from diffusion.data.features import caption_dir, feature_name, latent_dir, load_data_info, target_size
from diffusion.data.info import check_unique_names
from diffusion.data.provenance import read_meta
from diffusion.data.sources import edited_captions
from diffusion.registry import DATASETS


def collate(items: list[dict]) -> dict:
    """Stack tensors along a new batch dim, turn ints into a LongTensor and list strings (and other values).

    Tensors of different shapes are a ValueError naming the key, the shapes and the items' ``index``.
    """
    batch = {}
    for key, value in items[0].items():
        values = [item[key] for item in items]
        if isinstance(value, torch.Tensor):
            shapes = {tuple(v.shape) for v in values}
            if len(shapes) > 1:
                where = [(item.get("index"), tuple(item[key].shape)) for item in items]
                raise ValueError(f"cannot batch {key!r}: items (index, shape) differ: {where}")
            batch[key] = torch.stack(values)
        elif isinstance(value, int):
            batch[key] = torch.tensor(values, dtype=torch.long)
        else:
            batch[key] = values
    return batch


def sample_latent(
    mean: torch.Tensor, std: torch.Tensor, scale_factor: float, generator: torch.Generator | None = None
) -> torch.Tensor:
    """A draw from the codec posterior, scaled: ``(mean + std·ε)·scale_factor`` (B, C, h, w) float32, ε drawn from
    ``generator`` on its device (the global RNG of ``mean``'s device when None). The one way a latent is sampled, from
    a cache (:func:`prepare_batch`) or from images encoded in the training step (``diffusion.data.encoding``)."""
    mean, std = mean.float(), std.float()
    noise = torch.randn(mean.shape, generator=generator, device=generator.device if generator else mean.device)
    return (mean + std * noise.to(mean.device)) * scale_factor


def _sample_latent(feat: torch.Tensor, scale_factor: float, generator: torch.Generator | None) -> torch.Tensor:
    return sample_latent(*feat.chunk(2, dim=1), scale_factor, generator)  # feat (B, 2C, h, w) = [mean ‖ std]


def prepare_batch(
    batch: dict,
    scale_factor: float,
    generator: torch.Generator | None = None,
    device: str | torch.device | None = None,
) -> dict:
    """Collated batch → the prepared batch of docs/design.md.

    Latents are sampled from the cached posterior: ``x0 = (mean + std·ε)·scale_factor`` (B, C, h, w); likewise the
    control latent ``c`` when ``control_feat`` is present. Returns ``{x0, y (B,1,L,C), y_mask (B,L) long,
    data_info {img_hw (B,2), aspect_ratio (B,1)}, prompt [, c]}``, moved to ``device`` when given.
    """
    device = device or batch["vae_feat"].device
    prepared = {
        "x0": _sample_latent(batch["vae_feat"], scale_factor, generator).to(device),
        "y": batch["y"].float().to(device),
        "y_mask": batch["y_mask"].long().to(device),
        "data_info": {
            "img_hw": batch["img_hw"].float().to(device),
            "aspect_ratio": batch["aspect_ratio"].float().to(device),
        },
        "prompt": list(batch["prompt"]),
    }
    if "control_feat" in batch:
        prepared["c"] = _sample_latent(batch["control_feat"], scale_factor, generator).to(device)
    return prepared


@DATASETS.register_module()
class FeatureDataset(Dataset):
    """Items from ``<root>/<json>`` and the caches written by ``tools/extract_features.py``.

    Args:
        root: data folder holding data_info.json and the cache directories.
        resolution: training resolution R (selects ``vae_features_<R>[_ms]``).
        max_length: L, the token count every caption file must have (``data.max_length``).
        multi_scale: read the bucketed ``_ms`` caches; ``aspect_ratio`` is then the bucket key.
        latent_channels, downsample: codec geometry for shape checks; default: the cache's meta.json.
        caption_channels: C_text for shape checks (``data.caption_channels``); default: caption_features/meta.json,
            else the first caption file read.

    Attributes:
        skipped_items: (file, reason) of every distinct item skipped so far (missing at build, unreadable at load).
        replaced: how many times an unreadable item was served by another one.
    """

    yields = "features"  # cached features: the trainer samples latents from them (diffusion/engine/data_source.py)
    collate = staticmethod(collate)
    prepare_batch = staticmethod(prepare_batch)

    def __init__(
        self,
        root: str | Path,
        resolution: int,
        max_length: int,
        json: str = "data_info.json",
        load_control: bool = False,
        multi_scale: bool = False,
        latent_channels: int | None = None,
        downsample: int | None = None,
        caption_channels: int | None = None,
    ) -> None:
        self.root = Path(root)
        self.resolution, self.max_length, self.multi_scale = resolution, max_length, multi_scale
        self.load_control = load_control
        self.latent_dir = latent_dir(root, resolution, multi_scale)
        self.control_dir = latent_dir(root, resolution, multi_scale, control=True)
        self.latent_meta = meta = read_meta(self.latent_dir)  # the cache's producer (scale_factor, VAE, ...)
        self.latent_channels = latent_channels or meta.get("latent_channels")
        self.downsample = downsample or meta.get("downsample")
        self._check_caption_meta(caption_channels)
        self.skipped_items: list[tuple[str, str]] = []  # (file, reason)
        self._skipped_paths: set[str] = set()
        self.replaced = 0
        entries = load_data_info(self.root / json)
        check_unique_names(entries, self.root / json)
        self._check_prompts(entries, self.root / json)
        self.entries, self.aspect_ratios, self._sizes = [], [], []
        for entry in entries:
            missing = [p for p in self._files(entry).values() if not p.is_file()]
            if missing:
                self._skip(str(missing[0]), "missing feature file")
                continue
            self.entries.append(entry)
            self.aspect_ratios.append(float(entry["height"]) / float(entry["width"]))
            self._sizes.append(target_size(entry, resolution, multi_scale))
        if not self.entries:
            raise ValueError(f"no usable items: {self.report()}\nrun tools/extract_features.py on {self.root}")
        # fallback candidates: the other items of the same latent size, in dataset order (O(1) per __getitem__)
        groups: dict[tuple[int, int], list[int]] = {}
        for index, size in enumerate(self._sizes):
            groups.setdefault(size, []).append(index)
        self._group = [groups[size] for size in self._sizes]
        self._position = [0] * len(self._sizes)
        for members in groups.values():
            for position, index in enumerate(members):
                self._position[index] = position

    def _check_caption_meta(self, caption_channels: int | None) -> None:
        meta_file = caption_dir(self.root) / "meta.json"
        meta = read_meta(caption_dir(self.root))
        if meta.get("max_length") not in (None, self.max_length):
            raise ValueError(
                f"{meta_file}: the captions were extracted with max_length {meta['max_length']}, but "
                f"data.max_length is {self.max_length}; set data.max_length (and model.model_max_length) to "
                f"{meta['max_length']} or re-extract with --max-length {self.max_length} --redo"
            )
        recorded = meta.get("caption_channels")
        if caption_channels and recorded and caption_channels != recorded:
            raise ValueError(
                f"{meta_file}: the captions have {recorded} channels, but data.caption_channels is {caption_channels}"
            )
        self.caption_channels = caption_channels or recorded
        self._channels_source = "data.caption_channels" if caption_channels else str(meta_file)

    def _check_prompts(self, entries: list[dict], json_path: Path) -> None:
        """Refuse captions recorded (sources.py) from another prompt than data_info.json's: edited since."""
        names = [feature_name(entry["path"]) for entry in entries]
        edited = edited_captions(caption_dir(self.root), names, [entry["prompt"] for entry in entries])
        if edited:
            raise ValueError(
                f"{caption_dir(self.root) / edited[0]}.npz was extracted from another prompt than {json_path}'s "
                f"({len(edited)} caption(s) edited since extraction, or written by an extraction that was killed); "
                f"rerun tools/extract_features.py on {self.root}"
            )

    def _files(self, entry: dict) -> dict[str, Path]:
        name = feature_name(entry["path"])
        files = {"caption": caption_dir(self.root) / f"{name}.npz", "latent": self.latent_dir / f"{name}.npy"}
        if self.load_control:
            files["control"] = self.control_dir / f"{name}.npy"
        return files

    def _skip(self, path: str, reason: str) -> bool:
        """Record a skipped file once; True when it is new."""
        if path in self._skipped_paths:
            return False
        self._skipped_paths.add(path)
        self.skipped_items.append((path, reason))
        return True

    def note_skipped(self, items) -> None:
        """Record skips reported by DataLoader workers: the ``skipped`` field of collated items (a list per item of
        (file, reason) pairs). Workers own copies of the dataset, so their counts reach the epoch report only so."""
        for pairs in items:
            for path, reason in pairs:
                self._skip(path, reason)
                self.replaced += 1

    @property
    def skipped(self) -> int:
        return len(self.skipped_items)

    def report(self) -> str:
        """One line of counts plus up to five example reasons."""
        text = (
            f"FeatureDataset({self.root}, res {self.resolution}): {len(self)} items, {self.skipped} skipped, "
            f"{self.replaced} replaced by another item"
        )
        return text + "".join(f"\n  skipped {path}: {reason}" for path, reason in self.skipped_items[:5])

    def __len__(self) -> int:
        return len(self.entries)

    def __getitem__(self, index: int) -> dict:
        group, position = self._group[index], self._position[index]
        in_worker = get_worker_info() is not None
        bad = []
        for k in range(len(group)):  # this item first, then the next ones of the same latent size
            candidate = group[(position + k) % len(group)]
            files = self._files(self.entries[candidate])
            try:
                arrays = self._read(files)
            except Exception as error:  # unreadable cache file: report it and use the next item of the same size
                bad.append((self.entries[candidate]["path"], str(error)))
                warnings.warn(f"FeatureDataset: skipping {self.entries[candidate]['path']}, unreadable cache {error}")
                continue
            self._check_shapes(candidate, files, arrays)
            item = self._make_item(candidate, arrays)
            if in_worker:
                item["skipped"] = tuple(bad)  # the main process records it (note_skipped)
            else:
                self.note_skipped([bad])
            return item
        raise RuntimeError(f"no readable item with latent size {self._sizes[index]}; {self.report()}")

    def _read(self, files: dict[str, Path]) -> dict[str, np.ndarray]:
        """Load the item's cache files; any failure is an OSError naming the file."""
        arrays = {}
        for kind, path in files.items():
            try:
                if kind == "caption":
                    with np.load(path) as caption:
                        arrays["y"], arrays["y_mask"] = caption["caption_feature"], caption["attention_mask"]
                else:
                    arrays["vae_feat" if kind == "latent" else "control_feat"] = np.load(path)
            except Exception as error:
                raise OSError(f"{path}: {type(error).__name__}: {error}") from error
        return arrays

    def _check_shapes(self, index: int, files: dict[str, Path], arrays: dict[str, np.ndarray]) -> None:
        y, y_mask = arrays["y"], arrays["y_mask"]
        if y.ndim != 3 or y.shape[:2] != (1, self.max_length):
            raise ValueError(
                f"{files['caption']}: caption_feature has shape {y.shape}, expected (1, L={self.max_length}, C) "
                "(data.max_length)"
            )
        if self.caption_channels is None:  # no meta.json: the first file read sets the width
            self.caption_channels, self._channels_source = (
                y.shape[-1],
                f"the first caption file read ({files['caption']})",
            )
        if y.shape[-1] != self.caption_channels:
            raise ValueError(
                f"{files['caption']}: caption_feature has {y.shape[-1]} channels, but {self._channels_source} says "
                f"{self.caption_channels}; the caches mix text encoders (re-extract with --redo), and "
                "model.caption_channels must equal the cache's width"
            )
        if y_mask.shape != (1, self.max_length):
            raise ValueError(
                f"{files['caption']}: attention_mask has shape {y_mask.shape}, expected (1, {self.max_length})"
            )
        h, w = self._sizes[index]
        for key, kind in (("vae_feat", "latent"), ("control_feat", "control")):
            if key not in arrays:
                continue
            shape = arrays[key].shape
            if self.latent_channels and self.downsample:
                expected = (2 * self.latent_channels, h // self.downsample, w // self.downsample)
                ok = shape == expected
            else:
                expected, ok = "(2C, h, w)", len(shape) == 3 and shape[0] % 2 == 0
            if not ok:
                raise ValueError(f"{files[kind]}: feature has shape {shape}, expected {expected}")

    def _make_item(self, index: int, arrays: dict[str, np.ndarray]) -> dict:
        entry = self.entries[index]
        if self.multi_scale:  # the original size and the bucket (official InternalDataMS)
            hw = (float(entry["height"]), float(entry["width"]))
            ratio = float(closest_bucket(*hw, self.resolution)[0])
        else:  # the training size, what sampling passes (official InternalData / InternalDataHed)
            hw, ratio = (float(self.resolution), float(self.resolution)), 1.0
        item = {
            "vae_feat": torch.from_numpy(arrays["vae_feat"]).float(),
            "y": torch.from_numpy(arrays["y"]).float(),
            "y_mask": torch.from_numpy(arrays["y_mask"][0]).long(),
            "img_hw": torch.tensor(hw),
            "aspect_ratio": torch.tensor([ratio]),
            "prompt": entry["prompt"],
            "index": index,
        }
        if self.load_control:
            item["control_feat"] = torch.from_numpy(arrays["control_feat"]).float()
        return item
