"""Offline feature caches: T5 caption features and codec posteriors, extracted once before training.

PixArt-α/δ train on precomputed features (facts §3.4, §6): per image a caption file ``<name>.npz`` with
``caption_feature`` float32 [1, L, C] and ``attention_mask`` [1, L], and a latent file ``<name>.npy`` float32
[2C, h, w] = [posterior mean ‖ posterior std]. Our layout under the data root:

    caption_features/<name>.npz
    vae_features_<res>[_ms]/<name>.npy        (_ms: multi-scale, each image in its aspect-ratio bucket)
    control_features_<res>[_ms]/<name>.npy    (the codec posterior of the item's ``control_path`` image)

``<name>`` is the item's ``path`` with every '/' replaced by '_' and the extension dropped (``images/00001.png`` →
``images_00001``); the official code replaces only the last '/', which agrees for one-level paths like these.
"""

import json
import os
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from tqdm import tqdm

from diffusion.data.buckets import closest_bucket

REQUIRED_FIELDS = ("path", "prompt", "height", "width")


def feature_name(path: str) -> str:
    """``'images/00001.png'`` → ``'images_00001'`` (see module docstring)."""
    return os.path.splitext(path.replace("/", "_"))[0]


def caption_dir(root: str | Path) -> Path:
    return Path(root) / "caption_features"


def latent_dir(root: str | Path, resolution: int, multi_scale: bool = False, control: bool = False) -> Path:
    kind = "control_features" if control else "vae_features"
    return Path(root) / f"{kind}_{resolution}{'_ms' if multi_scale else ''}"


def load_data_info(json_path: str | Path, required: tuple[str, ...] = REQUIRED_FIELDS) -> list[dict]:
    """Read a data_info.json list; a missing field is a ValueError naming the file, the item and the field."""
    json_path = Path(json_path)
    if not json_path.is_file():
        raise FileNotFoundError(
            f"no {json_path}; make the embedded default with diffusion.data.ensure_embedded_default() or write the "
            "data_info.json of your images and run tools/extract_features.py"
        )
    entries = json.loads(json_path.read_text())
    if not isinstance(entries, list):
        raise ValueError(f"{json_path}: expected a JSON list of items, got {type(entries).__name__}")
    for i, entry in enumerate(entries):
        missing = [key for key in required if key not in entry]
        if missing:
            raise ValueError(f"{json_path}: item {i} is missing field(s) {missing}")
    return entries


def target_size(entry: dict, resolution: int, multi_scale: bool) -> tuple[int, int]:
    """Training (h, w) in pixels: its aspect-ratio bucket with ``multi_scale``, else (resolution, resolution)."""
    if multi_scale:
        return closest_bucket(float(entry["height"]), float(entry["width"]), resolution)[1]
    return resolution, resolution


def load_image(path: str | Path, size: tuple[int, int]) -> torch.Tensor:
    """Read an image as RGB, resize it (bicubic) to cover ``size`` = (h, w) and centre-crop: (3, h, w) in [-1, 1]."""
    with Image.open(path) as img:
        img = img.convert("RGB")
        h, w = size
        if (img.height, img.width) != (h, w):
            scale = max(h / img.height, w / img.width)
            new_w, new_h = max(w, round(img.width * scale)), max(h, round(img.height * scale))
            img = img.resize((new_w, new_h), Image.BICUBIC)
            left, top = (new_w - w) // 2, (new_h - h) // 2
            img = img.crop((left, top, left + w, top + h))
        array = np.asarray(img, dtype=np.float32)
    return torch.from_numpy(array).permute(2, 0, 1) / 127.5 - 1.0


def codec_meta(codec, resolution: int, multi_scale: bool) -> dict:
    """What a latent directory's ``meta.json`` records, so the dataset can check feature shapes."""
    return {
        "codec": type(codec).__name__,
        "latent_channels": int(codec.latent_channels),
        "downsample": int(codec.downsample),
        "resolution": int(resolution),
        "multi_scale": bool(multi_scale),
    }


def _write_meta(directory: Path, meta: dict) -> None:
    path = directory / "meta.json"
    if path.exists() and json.loads(path.read_text()) != meta:
        raise ValueError(f"{path} records {json.loads(path.read_text())}, but this run would write {meta}")
    path.write_text(json.dumps(meta, indent=1))


def _atomic_save(path: Path, write) -> None:
    """Write through a temporary file and rename, so an interrupted run never leaves a truncated cache file."""
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        write(f)
    os.replace(tmp, path)


@dataclass
class ExtractionReport:
    """What one ``extract_features`` call did on this rank."""

    captions: int = 0
    latents: int = 0
    controls: int = 0
    existing: int = 0
    bad: list[tuple[str, str]] = field(default_factory=list)  # (image path, reason)

    def summary(self) -> str:
        text = (
            f"wrote {self.captions} caption, {self.latents} latent, {self.controls} control files; "
            f"{self.existing} already existed; {len(self.bad)} bad image(s)"
        )
        return text + "".join(f"\n  bad: {path}: {reason}" for path, reason in self.bad)


def _encode_images(codec, jobs: list[tuple[Path, Path, tuple[int, int]]], device, report: ExtractionReport) -> int:
    """Encode (image path, output .npy, (h, w)) jobs, one codec call per target size; returns files written."""
    by_size = defaultdict(list)
    for image_path, out_path, size in jobs:
        try:
            by_size[size].append((load_image(image_path, size), out_path))
        except Exception as error:  # any unreadable/corrupt image is skipped and reported, never fatal
            report.bad.append((str(image_path), f"{type(error).__name__}: {error}"))
    for items in by_size.values():
        images = torch.stack([image for image, _ in items]).to(device)
        mean, std = codec.encode(images)
        features = torch.cat([mean, std], dim=1).float().cpu().numpy()  # (B, 2C, h, w)
        for feature, (_, out_path) in zip(features, items):
            _atomic_save(out_path, lambda f, a=feature: np.save(f, a))
    return sum(len(items) for items in by_size.values())


def extract_features(
    data_root: str | Path,
    text_encoder,
    codec,
    resolution: int,
    multi_scale: bool = False,
    control: bool = False,
    batch_size: int = 64,
    rank: int = 0,
    world_size: int = 1,
    json_name: str = "data_info.json",
    device: str | torch.device = "cpu",
    progress: bool = True,
) -> ExtractionReport:
    """Cache caption and codec features for this rank's share (items ``rank::world_size``) of ``data_root``.

    Files that already exist are skipped, so an interrupted run resumes. Unreadable images are counted in the
    report and get no latent file (the dataset then skips the item).

    Args:
        text_encoder: a :class:`~diffusion.data.text_encoder.TextEncoder` (``encode(prompts) -> (y, y_mask)``).
        codec: a codec (``encode(images (B,3,H,W) in [-1,1]) -> (mean, std)``).
        control: also cache ``control_path`` images into ``control_features_<res>``.
    """
    root = Path(data_root)
    required = REQUIRED_FIELDS + (("control_path",) if control else ())
    entries = load_data_info(root / json_name, required)[rank::world_size]
    out_dirs = {"caption": caption_dir(root), "latent": latent_dir(root, resolution, multi_scale)}
    if control:
        out_dirs["control"] = latent_dir(root, resolution, multi_scale, control=True)
    for kind, directory in out_dirs.items():
        directory.mkdir(parents=True, exist_ok=True)
        if kind != "caption":
            _write_meta(directory, codec_meta(codec, resolution, multi_scale))
    report = ExtractionReport()
    chunks = range(0, len(entries), batch_size)
    for start in tqdm(chunks, desc=f"features rank {rank}", disable=not progress):
        chunk = entries[start : start + batch_size]
        names = [feature_name(entry["path"]) for entry in chunk]
        todo = [(e, n) for e, n in zip(chunk, names) if not (out_dirs["caption"] / f"{n}.npz").exists()]
        if todo:
            y, y_mask = text_encoder.encode([e["prompt"] for e, _ in todo])
            y, y_mask = y.float().cpu().numpy(), y_mask.cpu().numpy()
            for i, (_, name) in enumerate(todo):
                arrays = {"caption_feature": y[i], "attention_mask": y_mask[i : i + 1]}  # [1,L,C], [1,L]
                _atomic_save(out_dirs["caption"] / f"{name}.npz", lambda f, a=arrays: np.savez(f, **a))
            report.captions += len(todo)
        report.existing += len(chunk) - len(todo)
        for kind, key in (("latent", "path"), ("control", "control_path")):
            if kind not in out_dirs:
                continue
            jobs = [
                (root / e[key], out_dirs[kind] / f"{n}.npy", target_size(e, resolution, multi_scale))
                for e, n in zip(chunk, names)
            ]
            todo_jobs = [job for job in jobs if not job[1].exists()]
            report.existing += len(jobs) - len(todo_jobs)
            written = _encode_images(codec, todo_jobs, device, report)
            setattr(report, kind + "s", getattr(report, kind + "s") + written)
    return report
