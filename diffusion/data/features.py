"""Offline feature caches: T5 caption features and codec posteriors, extracted once before training.

PixArt-α/δ train on precomputed features (facts §3.4, §6): per image a caption file ``<name>.npz`` with
``caption_feature`` float32 [1, L, C] and ``attention_mask`` [1, L], and a latent file ``<name>.npy`` float32
[2C, h, w] = [posterior mean ‖ posterior std]. Our layout under the data root:

    caption_features/<name>.npz               + meta.json (the text encoder that made them, see provenance.py)
    vae_features_<res>[_ms]/<name>.npy        + meta.json (_ms: multi-scale, each image in its aspect-ratio bucket)
    control_features_<res>[_ms]/<name>.npy    + meta.json (the codec posterior of the item's control image, below)

The control image (PixArt-δ §4, facts §4.3) is either the item's ``control_path`` image as it is (a ready edge,
depth or scribble map), or an annotator's map (HED, Canny: diffusion/data/annotators.py) of the item's own image
``path`` at its training size, as the official HED extraction does, made the 3-channel picture ``to_control_image``
gives (the one ``Pipeline`` encodes at sampling time). Either way the same codec as the images encodes it.

``<name>`` is the item's ``path`` with every '/' replaced by '_' and the extension dropped (``images/00001.png`` →
``images_00001``); the official code replaces only the last '/', which agrees for one-level paths like these. Two
items whose names collide (``a.jpg``/``a.png``, ``a/b_c.png``/``a_b/c.png``) are refused up front, naming both.
"""

import os
from collections import defaultdict
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from diffusion.data.annotators import control_pixels
from diffusion.data.buckets import closest_bucket
from diffusion.data.images import load_image
from diffusion.data.info import REQUIRED_FIELDS, check_unique_names, feature_name, load_data_info
from diffusion.data.provenance import annotator_meta, caption_meta, check_meta, codec_meta, read_meta, write_meta
from diffusion.data.sources import SourceIndex, image_source, prompt_source

__all__ = ["REQUIRED_FIELDS", "ExtractionInterrupted", "ExtractionReport", "caption_dir", "extract_features"]
__all__ += ["feature_name", "latent_dir", "load_data_info", "target_size"]


def caption_dir(root: str | Path) -> Path:
    return Path(root) / "caption_features"


def latent_dir(root: str | Path, resolution: int, multi_scale: bool = False, control: bool = False) -> Path:
    kind = "control_features" if control else "vae_features"
    return Path(root) / f"{kind}_{resolution}{'_ms' if multi_scale else ''}"


def target_size(entry: dict, resolution: int, multi_scale: bool) -> tuple[int, int]:
    """Training (h, w) in pixels: its aspect-ratio bucket with ``multi_scale``, else (resolution, resolution)."""
    if multi_scale:
        return closest_bucket(float(entry["height"]), float(entry["width"]), resolution)[1]
    return resolution, resolution


def _atomic_save(path: Path, write: Callable) -> None:
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
    changed: int = 0  # existing files whose source changed since (edited caption, replaced image): rewritten
    unverified: int = 0  # existing files without a source record (older caches, interrupted runs): kept
    bad: list[tuple[str, str]] = field(default_factory=list)  # (image path, reason), each image once
    _listed: set[str] = field(default_factory=set, repr=False, compare=False)

    def add_bad(self, path: str, reason: str) -> None:
        if path not in self._listed:  # an image an annotator maps fails for its latent and its control
            self._listed.add(path)
            self.bad.append((path, reason))

    def summary(self) -> str:
        text = (
            f"wrote {self.captions} caption, {self.latents} latent, {self.controls} control files; "
            f"{self.existing} already existed ({self.unverified} unverified: no source record); "
            f"{self.changed} redone because their source changed; {len(self.bad)} bad image(s)"
        )
        return text + "".join(f"\n  bad: {path}: {reason}" for path, reason in self.bad)


class ExtractionInterrupted(Exception):
    """``extract_features`` stopped at a batch boundary because ``should_stop()`` said so (a SIGTERM); ``report``
    holds what was written, every file of it recorded (sources.py), so a rerun resumes."""

    def __init__(self, report: ExtractionReport, where: str) -> None:
        super().__init__(where)
        self.report, self.where = report, where


def _check_stop(should_stop: Callable[[], bool] | None, report: ExtractionReport, where: str) -> None:
    if should_stop is not None and should_stop():
        raise ExtractionInterrupted(report, where)


@dataclass
class _Job:
    image: Path
    out: Path
    size: tuple[int, int]
    declared: tuple[int, int] | None
    source: str | None = None  # what the feature is made from (sources.py)


def _load(job: _Job) -> tuple[_Job, torch.Tensor | None, str | None]:
    try:
        return job, load_image(job.image, job.size, job.declared), None
    except Exception as error:  # any unreadable/corrupt/mis-declared image is skipped and reported, never fatal
        return job, None, f"{type(error).__name__}: {error}"


def _encode_images(
    codec,
    jobs: list[_Job],
    index: SourceIndex,
    batch_size: int,
    device,
    report: ExtractionReport,
    workers: int,
    desc: str,
    progress: bool,
    annotator: nn.Module | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> None:
    """Encode jobs (their images, or ``annotator``'s control images of them), at most ``batch_size`` images of one
    target size per codec call; counts the files written in ``report.<desc>``; checks ``should_stop`` after each
    batch."""
    by_size: dict[tuple[int, int], list[_Job]] = defaultdict(list)
    for job in jobs:
        by_size[job.size].append(job)
    batches = [group[i : i + batch_size] for group in by_size.values() for i in range(0, len(group), batch_size)]
    done = 0
    with ThreadPoolExecutor(max(1, workers)) as pool, tqdm(total=len(jobs), desc=desc, disable=not progress) as bar:
        for batch in batches:
            loaded = []
            for job, image, error in pool.map(_load, batch):  # decoding and resizing release the GIL
                if error is None:
                    loaded.append((job, image))
                else:
                    report.add_bad(str(job.image), error)
                    job.out.unlink(missing_ok=True)  # never leave a stale latent for an image that is now bad
                    index.record(job.out.stem, None)
            bar.update(len(batch))
            done += len(batch)
            if loaded:  # else every image of this batch was unreadable
                images = torch.stack([image for _, image in loaded]).to(device)
                mean, std = codec.encode(images if annotator is None else control_pixels(annotator, images))
                features = torch.cat([mean, std], dim=1).float().cpu().numpy()  # (B, 2C, h, w)
                index.begin([job.out.stem for job, _ in loaded])  # a kill before each record: redone
                for feature, (job, _) in zip(features, loaded):
                    _atomic_save(job.out, lambda f, a=feature: np.save(f, a))
                    index.record(job.out.stem, job.source)
                setattr(report, desc, getattr(report, desc) + len(loaded))
            _check_stop(should_stop, report, f"in the {desc} pass after {done} of {len(jobs)} images")


def _encode_captions(
    text_encoder,
    todo: list[tuple[dict, str]],
    index: SourceIndex,
    batch_size: int,
    progress: bool,
    report: ExtractionReport,
    should_stop: Callable[[], bool] | None,
) -> None:
    out = index.path.parent
    chunks = range(0, len(todo), batch_size)
    for start in tqdm(chunks, desc="captions", disable=not progress):
        chunk = todo[start : start + batch_size]
        y, y_mask = text_encoder.encode([entry["prompt"] for entry, _ in chunk])
        y, y_mask = y.float().cpu().numpy(), y_mask.cpu().numpy()
        index.begin([name for _, name in chunk])  # a kill before each record: redone
        for i, (_, name) in enumerate(chunk):
            arrays = {"caption_feature": y[i], "attention_mask": y_mask[i : i + 1]}  # [1,L,C], [1,L]
            _atomic_save(out / f"{name}.npz", lambda f, a=arrays: np.savez(f, **a))
            index.record(name, prompt_source(chunk[i][0]["prompt"]))
        report.captions += len(chunk)
        _check_stop(should_stop, report, f"in the captions pass after {start + len(chunk)} of {len(todo)} captions")


def extract_features(
    data_root: str | Path,
    text_encoder,
    codec,
    resolution: int,
    multi_scale: bool = False,
    control: bool = False,
    annotator: nn.Module | None = None,
    text_batch_size: int = 64,
    vae_batch_size: int = 4,
    rank: int = 0,
    world_size: int = 1,
    json_name: str = "data_info.json",
    device: str | torch.device = "cpu",
    progress: bool = True,
    redo: bool | str = False,
    check_sizes: bool = True,
    workers: int = 4,
    should_stop: Callable[[], bool] | None = None,
) -> ExtractionReport:
    """Cache caption and codec features for this rank's share (items ``rank::world_size``) of ``data_root``.

    Files that already exist are skipped, so an interrupted run resumes, unless their source changed since (an edited
    prompt, a replaced image: its size, mtime or declared size; see sources.py), which re-extracts them (counted as
    ``changed``), or the directory's ``meta.json`` records another producer: that is a ValueError. Files without a
    source record are kept and counted as ``unverified``. ``redo='stale'`` (or True) re-extracts this rank's share
    of the stale caches only (another T5 redoes the captions, not the image latents); ``redo='all'`` of every cache.
    Rank 0 writes the ``meta.json`` files. Unreadable images, and images whose oriented aspect ratio differs from the
    declared ``height``/``width`` (``check_sizes``), are listed in the report and get no latent file (the dataset
    then skips the item). Colliding feature names are a ValueError before anything is written.

    Args:
        text_encoder: a :class:`~diffusion.data.text_encoder.TextEncoder` (``encode(prompts) -> (y, y_mask)``).
        codec: a codec (``encode(images (B,3,H,W) in [-1,1]) -> (mean, std)``).
        control: also cache control latents into ``control_features_<res>[_ms]``: of each item's ``control_path``
            image as it is when ``annotator`` is None, else of ``annotator``'s map of the item's own image.
        annotator: a control annotator (``HEDAnnotator``, ``CannyAnnotator``: images (B, 3, H, W) in [0, 1] ->
            maps (B, 1, H, W) in [0, 1]), run on ``device`` batches; recorded in the control ``meta.json``, so a
            cache made with another annotator or other parameters is refused like another codec.
        text_batch_size, vae_batch_size: captions per T5 call, images per codec call.
        workers: threads decoding images.
        should_stop: asked after every caption chunk and image batch (a SIGTERM handler's flag); when it says
            True, :class:`ExtractionInterrupted` is raised with the report so far (everything written is recorded).
    """
    if annotator is not None and not control:
        raise ValueError("an annotator makes control latents: pass control=True with it")
    redo = {False: None, True: "stale"}.get(redo, redo) if isinstance(redo, bool) else redo
    if redo not in (None, "stale", "all"):
        raise ValueError(f"redo must be False, True / 'stale' or 'all', not {redo!r}")
    root = Path(data_root)
    required = REQUIRED_FIELDS + (("control_path",) if control and annotator is None else ())
    all_entries = load_data_info(root / json_name, required)
    check_unique_names(all_entries, root / json_name)
    entries = all_entries[rank::world_size]
    metas = {caption_dir(root): caption_meta(text_encoder)}
    metas[latent_dir(root, resolution, multi_scale)] = codec_meta(codec, resolution, multi_scale)
    if control:
        control_meta = codec_meta(codec, resolution, multi_scale) | annotator_meta(annotator)
        metas[latent_dir(root, resolution, multi_scale, control=True)] = control_meta
    rewrite = {}  # directory -> its existing files are overwritten
    for directory, meta in metas.items():
        stale = check_meta(directory, meta, redo is not None)  # raises on a stale cache unless redo
        rewrite[directory] = redo == "all" or stale
        recorded = read_meta(directory)
        directory.mkdir(parents=True, exist_ok=True)
        if rank == 0 and (rewrite[directory] or not recorded):  # an older, shorter record is kept: it describes
            write_meta(directory, meta)  # the old files
    report = ExtractionReport()
    names = [feature_name(entry["path"]) for entry in entries]

    index = SourceIndex(caption_dir(root), rank)
    captions = rewrite[caption_dir(root)]
    todo = [
        (e, n)
        for e, n in zip(entries, names)
        if _needs(index, captions, n, ".npz", prompt_source(e["prompt"]), report)
    ]
    try:
        _encode_captions(text_encoder, todo, index, text_batch_size, progress, report, should_stop)
    finally:
        index.flush()

    kinds = [("latent", "path", None)]
    if control:  # an annotator maps the item's own image; without one, control_path is the control image
        kinds.append(("control", "control_path" if annotator is None else "path", annotator))
    for kind, key, net in kinds:
        out = latent_dir(root, resolution, multi_scale, control=kind == "control")
        index, jobs = SourceIndex(out, rank), []
        for entry, name in zip(entries, names):
            hw, size = (int(entry["height"]), int(entry["width"])), target_size(entry, resolution, multi_scale)
            # the declared size describes the image; a control_path map may be stored at another size
            declared = hw if check_sizes and key == "path" else None
            job = _Job(
                root / entry[key], out / f"{name}.npy", size, declared, image_source(root / entry[key], hw, size)
            )
            if _needs(index, rewrite[out], name, ".npy", job.source, report):
                jobs.append(job)
        try:
            _encode_images(
                codec, jobs, index, vae_batch_size, device, report, workers, kind + "s", progress, net, should_stop
            )
        finally:
            index.flush()
    return report


def _needs(
    index: SourceIndex, rewrite: bool, name: str, ext: str, source: str | None, report: ExtractionReport
) -> bool:
    """Whether the feature ``name`` + ``ext`` must be (re)written: ``rewrite``, missing, or recorded from another
    ``source`` than this one (sources.py); counts the kept ones as existing (and unverified) and the others as changed.
    """
    if rewrite or not (index.path.parent / f"{name}{ext}").exists():
        return True
    status = index.status(name, source) if source is not None else "unverified"  # an image gone: keep its latent
    if status == "changed":
        report.changed += 1
        return True
    report.existing += 1
    report.unverified += status == "unverified"
    return False
