"""What produced a feature cache: the ``meta.json`` of every cache directory (facts §6 layout, our addition).

PixArt-α/δ train on features extracted once, offline; a cache made with another T5, ``max_length``, VAE or scale
factor is silently wrong for training. Each cache directory therefore records its producer:

- ``caption_features/meta.json``: text encoder path + fingerprint, max length, caption channels, weights dtype,
  caption cleaning on/off;
- ``vae_features_<res>[_ms]/meta.json`` (and the control one): codec type, its latent geometry and scale factor,
  the VAE path + fingerprint + its config, resolution and multi-scale;
- ``control_features_<res>[_ms]/meta.json`` also: the annotator that made the control maps (``image``: the items'
  ``control_path`` as they are; ``hed`` + the weights file and its fingerprint; ``canny`` + its thresholds).

Extraction compares the recorded producer with the current one and refuses a mismatch (or, with ``redo``, re-extracts
its share); the dataset checks the geometry it needs, and the trainer compares a config's codec and text encoder
(:func:`config_codec_meta`, :func:`config_caption_meta`: from its files, no weights loaded) before step 1. The
fingerprint hashes each model file's name, size and its first and last MiB: it tells a re-downloaded or different
checkpoint from the same one without reading 20 GB.
"""

import hashlib
import json
import os
from pathlib import Path

from diffusion.data.annotators import CannyAnnotator, HEDAnnotator

_MIB = 1 << 20
_PATH_KEYS = {"text_encoder": "fingerprint", "vae": "vae_fingerprint", "hed": "hed_fingerprint"}  # path -> its hash
# keys recorded only since a later version, with the one value a cache written before then can have: control caches
# were all made from the items' control_path images as they are
_IMPLIED = {"annotator": "image"}
_CODEC_KEYS = ("codec", "latent_channels", "downsample", "scale_factor")
_VOLATILE_CONFIG_KEYS = ("_name_or_path", "_diffusers_version", "transformers_version")


def fingerprint(path: str | Path) -> str:
    """Short hash of the model files in the directory ``path`` (names, sizes, first and last MiB of each), or of the
    one model file ``path`` (its size, first and last MiB: the same weights under another name are the same)."""
    digest, path = hashlib.sha256(), Path(path)
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    for file in files:
        size = file.stat().st_size
        digest.update(f"{'' if file == path else file.relative_to(path)}:{size}".encode())
        with open(file, "rb") as f:
            digest.update(f.read(_MIB))
            if size > 2 * _MIB:
                f.seek(size - _MIB)
                digest.update(f.read(_MIB))
    return digest.hexdigest()[:16]


def _model_config(directory: Path) -> dict:
    config = json.loads((directory / "config.json").read_text())
    return {k: v for k, v in config.items() if k not in _VOLATILE_CONFIG_KEYS}


def caption_meta(text_encoder) -> dict:
    """The producer record of ``caption_features/`` for a :class:`~diffusion.data.text_encoder.TextEncoder`."""
    path = getattr(text_encoder, "path", None)
    return {
        "text_encoder": str(path) if path else None,
        "fingerprint": fingerprint(path) if path else None,
        "max_length": int(text_encoder.max_length),
        "caption_channels": int(text_encoder.caption_channels),
        "dtype": str(next(text_encoder.model.parameters()).dtype).removeprefix("torch."),
        "clean_caption": bool(getattr(text_encoder, "clean_caption", False)),
    }


def codec_meta(codec, resolution: int, multi_scale: bool) -> dict:
    """The producer record of a latent directory; ``latent_channels``/``downsample`` let the dataset check shapes."""
    meta = {
        "codec": type(codec).__name__,
        "latent_channels": int(codec.latent_channels),
        "downsample": int(codec.downsample),
        "scale_factor": float(codec.scale_factor),
        "resolution": int(resolution),
        "multi_scale": bool(multi_scale),
    }
    path = getattr(codec, "path", None)
    if path is not None:
        meta |= {"vae": str(path), "vae_fingerprint": fingerprint(path), "vae_config": _model_config(Path(path))}
    return meta


def config_codec_meta(codec_cfg: dict) -> dict:
    """The geometry, scale factor and VAE record (as :func:`codec_meta` writes them) of a ``codec`` config section,
    without loading weights: a VAE's from its ``config.json`` and file fingerprint, a weight-free codec built."""
    from diffusion.registry import CODECS

    values = {k: v for k, v in codec_cfg.items() if k != "type"}
    if "path" not in values:
        return {k: v for k, v in codec_meta(CODECS.build(dict(codec_cfg)), 0, False).items() if k in _CODEC_KEYS}
    path = Path(values["path"])
    if not (path / "config.json").is_file():
        raise FileNotFoundError(f"config key 'codec.path': no model at {path} (expected {path / 'config.json'})")
    config = _model_config(path)
    scale = values.get("scale_factor")
    return {
        "codec": CODECS.get(codec_cfg["type"]).__name__,
        "latent_channels": int(config["latent_channels"]),
        "downsample": 2 ** (len(config["block_out_channels"]) - 1),
        "scale_factor": float(config["scaling_factor"] if scale is None else scale),
        "vae": str(path),
        "vae_fingerprint": fingerprint(path),
    }


def config_caption_meta(text_cfg: dict) -> dict:
    """The caption record of a resolved ``text_encoder`` config section (no T5 weights loaded); the path and its
    fingerprint only when it exists."""
    meta = {"max_length": int(text_cfg["max_length"]), "clean_caption": bool(text_cfg["clean_caption"])}
    if Path(text_cfg["path"]).exists():
        meta |= {"text_encoder": str(text_cfg["path"]), "fingerprint": fingerprint(text_cfg["path"])}
    return meta


def annotator_meta(annotator) -> dict:
    """The control-map producer recorded beside :func:`codec_meta` in a control cache: ``annotator`` None (the items'
    ``control_path`` images as they are), a :class:`HEDAnnotator` (its weights file) or a :class:`CannyAnnotator`
    (its thresholds); any other module by its class name."""
    if annotator is None:
        return {"annotator": "image"}
    if isinstance(annotator, HEDAnnotator):
        return {"annotator": "hed", "hed": str(annotator.path), "hed_fingerprint": fingerprint(annotator.path)}
    if isinstance(annotator, CannyAnnotator):
        return {
            "annotator": "canny",
            "canny_low": int(annotator.low),
            "canny_high": int(annotator.high),
            "canny_l2_gradient": bool(annotator.l2_gradient),
        }
    return {"annotator": type(annotator).__name__}


def read_meta(directory: str | Path) -> dict:
    """The directory's ``meta.json`` ({} when there is none); a corrupt one is a ValueError naming it."""
    path = Path(directory) / "meta.json"
    if not path.is_file():
        return {}
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise ValueError(f"{path} is not valid JSON ({error}); delete it and re-extract the directory") from error


def meta_mismatch(recorded: dict, current: dict) -> dict[str, tuple]:
    """{key: (recorded, current)} for every recorded key where the two producer records differ (a cache written
    before a key was recorded says nothing about it, so it stays valid, except a key of ``_IMPLIED``, whose value
    such a cache is known to have)."""
    recorded = {k: v for k, v in _IMPLIED.items() if k in current} | recorded
    diff = {k: (recorded.get(k), current.get(k)) for k in sorted(recorded) if recorded.get(k) != current.get(k)}
    for path_key, print_key in _PATH_KEYS.items():  # the same files seen from another cwd or mount are the same
        if path_key in diff and print_key in recorded and print_key not in diff:
            del diff[path_key]
    return diff


def check_meta(directory: str | Path, current: dict, redo: bool) -> bool:
    """Compare ``directory``'s recorded producer with ``current``.

    Returns True when the cache is stale and ``redo`` allows re-extracting it; raises ValueError naming the
    directory and every differing key when it is stale and ``redo`` is False; False when it matches or is new.
    """
    recorded = read_meta(directory)
    if not recorded:
        return False
    diff = meta_mismatch(recorded, current)
    if not diff:
        return False
    if redo:
        return True
    lines = "".join(f"\n  {k}: cache has {a!r}, this run has {b!r}" for k, (a, b) in diff.items())
    raise ValueError(
        f"{Path(directory)} was extracted with other settings:{lines}\n"
        "pass --redo to re-extract it, or use another --data-root"
    )


def write_meta(directory: str | Path, meta: dict) -> None:
    """Write ``meta.json`` atomically (temporary file + rename); call it from one rank only."""
    path = Path(directory) / "meta.json"
    tmp = path.with_name(f"meta.json.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(meta, indent=1))
    os.replace(tmp, path)
