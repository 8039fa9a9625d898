"""One shard sample: the img2dataset layout checked when read, decoded when its batch is made.

A sample is the tar members sharing a key (webdataset groups them): ``{key}.<image ext>`` (jpg, png, webp, ... any
format Pillow opens), ``{key}.txt`` the caption (UTF-8), ``{key}.json`` with at least ``height`` and ``width`` (the
stored image's size as displayed; with multi-scale, ``original_height`` / ``original_width``, as img2dataset writes
them for a resized copy, become the ``img_hw`` micro-condition, else ``height`` / ``width``; single-scale data passes
the training size (R, R), as the official single-scale datasets do), and for a ControlNet
``{key}.control.<ext>``.

:func:`parse` checks the cheap parts (members present, caption text, json sizes) when a sample is read, so it can be
bucketed by its json size without decoding; :func:`decode` reads the image bytes through ``open_rgb`` (EXIF, 16-bit,
alpha, CMYK) and ``load_pixels`` (resize to cover the bucket, centre crop), the same as feature extraction.
"""

import io
import json
from dataclasses import dataclass, field

import torch
from PIL import Image

from diffusion.data.buckets import closest_bucket
from diffusion.data.images import load_pixels

Image.init()
_PLUGIN_ONLY = {"bufr", "grib", "h5", "hdf", "eps", "ps", "wmf", "emf", "mpeg", "mpg"}  # need external code to read
IMAGE_EXTENSIONS = frozenset(
    ext.lstrip(".")
    for ext, fmt in Image.registered_extensions().items()
    if fmt in Image.OPEN and ext.lstrip(".") not in _PLUGIN_ONLY
)  # every format Pillow reads here: jpg, jpeg, png, webp, tif, ...


@dataclass(frozen=True)
class ReadSpec:
    """How samples become items: the training resolution, aspect-ratio buckets, whether a control image is needed."""

    resolution: int
    multi_scale: bool = False
    load_control: bool = False

    def bucket(self, height: float, width: float) -> tuple[str, tuple[int, int]]:
        """(ratio key, (h, w) pixels): the closest bucket with ``multi_scale``, else the square ('1.0', (R, R))."""
        if self.multi_scale:
            return closest_bucket(height, width, self.resolution)
        return "1.0", (self.resolution, self.resolution)


@dataclass
class Sample:
    """A checked, not yet decoded sample. ``ref`` = (shard index in the reader's list, sample index in the shard)."""

    ref: tuple[int, int]
    key: str
    url: str
    image: bytes
    caption: str
    size: tuple[int, int]  # (h, w) of the stored image, from the json
    img_hw: tuple[float, float]
    bucket: str
    target: tuple[int, int]
    control: bytes | None = None
    item: dict | None = field(default=None, repr=False)  # set by decode


def _number(meta: dict, name: str) -> float:
    value = meta.get(name)
    if isinstance(value, bool) or not isinstance(value, int | float) or not value > 0:
        raise ValueError(f"json field {name!r} is {value!r}, expected a positive number")
    return float(value)


def parse(raw: dict, ref: tuple[int, int], spec: ReadSpec) -> Sample:
    """A webdataset sample dict (``__key__``, ``__url__``, one entry per member suffix) → :class:`Sample`; a missing
    member, a caption that is not UTF-8 or empty, or a json without positive ``height``/``width`` is a ValueError
    saying which."""
    images = sorted(suffix for suffix in raw if suffix in IMAGE_EXTENSIONS)
    if not images:
        found = sorted(k for k in raw if not k.startswith("__"))
        raise ValueError(f"no image member (found {found})")
    if "txt" not in raw:
        raise ValueError("no caption (.txt member)")
    try:
        caption = raw["txt"].decode("utf-8-sig").strip()
    except UnicodeDecodeError as error:
        raise ValueError(f"caption is not UTF-8 ({error.reason} at byte {error.start})") from error
    if not caption:
        raise ValueError("empty caption")
    if "json" not in raw:
        raise ValueError("no .json member (height/width needed for its bucket)")
    try:
        meta = json.loads(raw["json"])
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise ValueError(f"json is not valid JSON ({error})") from error
    if not isinstance(meta, dict):
        raise ValueError(f"json is a {type(meta).__name__}, expected an object")
    height, width = _number(meta, "height"), _number(meta, "width")
    original = (meta.get("original_height"), meta.get("original_width"))
    if not spec.multi_scale:  # the training size, as the official single-scale datasets and R x R sampling give it
        img_hw = (float(spec.resolution), float(spec.resolution))
    elif all(original):
        img_hw = (_number(meta, "original_height"), _number(meta, "original_width"))
    else:
        img_hw = (height, width)
    control = None
    if spec.load_control:
        controls = sorted(k for k in raw if k.startswith("control.") and k[len("control.") :] in IMAGE_EXTENSIONS)
        if not controls:
            raise ValueError("no control image (.control.<ext> member) and data.load_control is set")
        control = raw[controls[0]]
    bucket, target = spec.bucket(height, width)
    return Sample(
        ref, raw["__key__"], raw["__url__"], raw[images[0]], caption, (int(height), int(width)), img_hw, bucket,
        target, control,
    )  # fmt: skip


def decode(sample: Sample, spec: ReadSpec) -> dict:
    """The item of ``sample`` (also kept in ``sample.item``): ``image`` (3, h, w) uint8 at its bucket size, ``prompt``,
    ``img_hw`` (2,) float (with multi-scale the original size, else (R, R)), ``aspect_ratio`` (1,) float (the bucket
    key with multi-scale, else 1.0), ``key``, ``shard``
    and with ``load_control`` ``control`` (3, h, w) uint8. Bad image bytes or a size that disagrees with the json are
    a ValueError."""
    if sample.item is None:
        where = f"{sample.url} {sample.key}.json"
        pixels = load_pixels(io.BytesIO(sample.image), sample.target, sample.size, declared_by=where)
        item = {
            "image": torch.from_numpy(pixels).permute(2, 0, 1).contiguous(),
            "prompt": sample.caption,
            "img_hw": torch.tensor(sample.img_hw, dtype=torch.float32),
            "aspect_ratio": torch.tensor([float(sample.bucket)]),
            "key": sample.key,
            "shard": sample.url,
        }
        if spec.load_control:
            control = load_pixels(io.BytesIO(sample.control), sample.target)
            item["control"] = torch.from_numpy(control).permute(2, 0, 1).contiguous()
        sample.item = item
    return sample.item
