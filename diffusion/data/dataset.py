"""Training dataset over cached features, and the batch the methods consume (PixArt-α §2.4 training data path,
reused by PixArt-δ's LCD §3 and ControlNet-Transformer §4).

An item (see docs/design.md) is ``vae_feat`` (2C, h, w) = [mean ‖ std], ``y`` (1, L, C_text), ``y_mask`` (L,) long,
``img_hw`` (2,) original (h, w) from data_info.json, ``aspect_ratio`` (1,) = h/w of the training latent (the bucket
key with multi-scale, 1.0 for the square single-scale crop, as in the official datasets), ``prompt``, ``index`` and,
with ``load_control``, ``control_feat`` (2C, h, w).

Bad input: items whose cache files are missing are dropped when the dataset is built; a file that exists but cannot
be read is replaced, at load time, by the next readable item with the same latent size (so bucketed batches stay
uniform). Both are counted in ``skipped`` / ``report()``. Malformed input is an error: a missing data_info field or a
cache array of the wrong shape raises ValueError naming the file and the field or shape.
"""

import json
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from diffusion.data.buckets import closest_bucket
from diffusion.data.features import caption_dir, feature_name, latent_dir, load_data_info, target_size
from diffusion.registry import DATASETS


def collate(items: list[dict]) -> dict:
    """Stack tensors along a new batch dim, turn ints into a LongTensor and list strings."""
    batch = {}
    for key, value in items[0].items():
        values = [item[key] for item in items]
        if isinstance(value, torch.Tensor):
            batch[key] = torch.stack(values)
        elif isinstance(value, int):
            batch[key] = torch.tensor(values, dtype=torch.long)
        else:
            batch[key] = values
    return batch


def _sample_latent(feat: torch.Tensor, scale_factor: float, generator: torch.Generator | None) -> torch.Tensor:
    mean, std = feat.float().chunk(2, dim=1)
    noise = torch.randn(mean.shape, generator=generator, device=generator.device if generator else mean.device)
    return (mean + std * noise.to(mean.device)) * scale_factor


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
        max_length: L, the token count every caption file must have.
        multi_scale: read the bucketed ``_ms`` caches; ``aspect_ratio`` is then the bucket key.
        latent_channels, downsample: codec geometry for shape checks; default: the cache's meta.json.
        caption_channels: C_text for shape checks; default: not checked.
    """

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
        self.load_control, self.caption_channels = load_control, caption_channels
        self.latent_dir = latent_dir(root, resolution, multi_scale)
        self.control_dir = latent_dir(root, resolution, multi_scale, control=True)
        meta = _read_meta(self.latent_dir)
        self.latent_channels = latent_channels or meta.get("latent_channels")
        self.downsample = downsample or meta.get("downsample")
        self.skipped_items: list[tuple[str, str]] = []  # (file, reason)
        self.entries, self.aspect_ratios, self._sizes = [], [], []
        for entry in load_data_info(self.root / json):
            missing = [p for p in self._files(entry).values() if not p.is_file()]
            if missing:
                self.skipped_items.append((str(missing[0]), "missing feature file"))
                continue
            self.entries.append(entry)
            self.aspect_ratios.append(float(entry["height"]) / float(entry["width"]))
            self._sizes.append(target_size(entry, resolution, multi_scale))

    def _files(self, entry: dict) -> dict[str, Path]:
        name = feature_name(entry["path"])
        files = {"caption": caption_dir(self.root) / f"{name}.npz", "latent": self.latent_dir / f"{name}.npy"}
        if self.load_control:
            files["control"] = self.control_dir / f"{name}.npy"
        return files

    @property
    def skipped(self) -> int:
        return len(self.skipped_items)

    def report(self) -> str:
        """One line of counts plus up to five example reasons."""
        text = f"FeatureDataset({self.root}, res {self.resolution}): {len(self)} items, {self.skipped} skipped"
        return text + "".join(f"\n  skipped {path}: {reason}" for path, reason in self.skipped_items[:5])

    def __len__(self) -> int:
        return len(self.entries)

    def __getitem__(self, index: int) -> dict:
        for candidate in self._fallback_order(index):
            files = self._files(self.entries[candidate])
            try:
                arrays = self._read(files)
            except Exception as error:  # unreadable cache file: count it and use the next item of the same size
                self.skipped_items.append((self.entries[candidate]["path"], f"{type(error).__name__}: {error}"))
                continue
            self._check_shapes(candidate, files, arrays)
            return self._make_item(candidate, arrays)
        raise RuntimeError(f"no readable item with latent size {self._sizes[index]}; {self.report()}")

    def _fallback_order(self, index: int) -> list[int]:
        order = [(index + k) % len(self) for k in range(len(self))]
        return [i for i in order if self._sizes[i] == self._sizes[index]]

    def _read(self, files: dict[str, Path]) -> dict[str, np.ndarray]:
        with np.load(files["caption"]) as caption:
            arrays = {"y": caption["caption_feature"], "y_mask": caption["attention_mask"]}
        arrays["vae_feat"] = np.load(files["latent"])
        if self.load_control:
            arrays["control_feat"] = np.load(files["control"])
        return arrays

    def _check_shapes(self, index: int, files: dict[str, Path], arrays: dict[str, np.ndarray]) -> None:
        y, y_mask = arrays["y"], arrays["y_mask"]
        channels = self.caption_channels or (y.shape[-1] if y.ndim == 3 else -1)
        if y.shape != (1, self.max_length, channels):
            raise ValueError(
                f"{files['caption']}: caption_feature has shape {y.shape}, expected (1, L={self.max_length}, C)"
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
        if self.multi_scale:
            ratio = float(closest_bucket(float(entry["height"]), float(entry["width"]), self.resolution)[0])
        else:
            ratio = 1.0
        item = {
            "vae_feat": torch.from_numpy(arrays["vae_feat"]).float(),
            "y": torch.from_numpy(arrays["y"]).float(),
            "y_mask": torch.from_numpy(arrays["y_mask"][0]).long(),
            "img_hw": torch.tensor([float(entry["height"]), float(entry["width"])]),
            "aspect_ratio": torch.tensor([ratio]),
            "prompt": entry["prompt"],
            "index": index,
        }
        if self.load_control:
            item["control_feat"] = torch.from_numpy(arrays["control_feat"]).float()
        return item


def _read_meta(directory: Path) -> dict:
    path = directory / "meta.json"
    return json.loads(path.read_text()) if path.is_file() else {}
