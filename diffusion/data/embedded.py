"""The embedded default dataset: captioned images of one coloured shape on a plain background.

Stands in for PixArt-δ's 120K internal image-text pairs (paper §3, "Training details") so that every training
method runs end to end without downloads. The files follow the official layout (facts §6): ``images/*.png`` plus a
``data_info.json`` list with ``path``, ``prompt``, ``height``, ``width``, ``ratio``, and, for the ControlNet
(paper §4), an exact 1-px edge map ``edges/*.png`` per image standing in for the HED map.

Every image is drawn without antialiasing, so a pixel belongs to the shape iff it has the shape's colour, and the edge
map is exactly the set of shape pixels with a 4-neighbour outside the shape.
"""

import itertools
import json
import re
from pathlib import Path

import numpy as np
from PIL import Image

SHAPES = ("circle", "square", "triangle", "cross")
COLORS = {
    "red": (220, 30, 30),
    "green": (30, 170, 50),
    "blue": (30, 70, 230),
    "yellow": (245, 215, 30),
    "purple": (140, 40, 200),
    "orange": (250, 130, 20),
}
SIZES = {"small": 0.1, "large": 0.2}  # half-extent of the shape as a fraction of the image side
POSITIONS = {  # (row, col) centre as a fraction of the image side
    "top left": (0.25, 0.25),
    "top right": (0.25, 0.75),
    "bottom left": (0.75, 0.25),
    "bottom right": (0.75, 0.75),
    "center": (0.5, 0.5),
}
BACKGROUNDS = {
    "white": (255, 255, 255),
    "gray": (128, 128, 128),
    "black": (0, 0, 0),
    "beige": (225, 205, 160),
}
ATTRIBUTES = ("shape", "color", "size", "position", "background")

VALIDATION_PROMPTS = [
    "a large red circle at the top left on a gray background",
    "a small blue square at the bottom right on a white background",
    "a large green triangle in the center on a black background",
    "a small yellow cross at the top right on a gray background",
    "a large purple square at the bottom left on a beige background",
    "a small orange circle in the center on a black background",
    "a large blue cross at the bottom right on a beige background",
    "a small red triangle at the top left on a white background",
]

_PROMPT_RE = re.compile(
    r"^a (?P<size>\w+) (?P<color>\w+) (?P<shape>\w+) (?:at the|in the) (?P<position>[\w ]+?) "
    r"on a (?P<background>\w+) background$"
)


def attribute_vocab() -> dict[str, list[str]]:
    """The values each attribute can take, e.g. ``{"shape": ["circle", ...], "color": [...], ...}``."""
    return {
        "shape": list(SHAPES),
        "color": list(COLORS),
        "size": list(SIZES),
        "position": list(POSITIONS),
        "background": list(BACKGROUNDS),
    }


def caption(attributes: dict[str, str]) -> str:
    """``{"shape": "circle", ...}`` → ``"a large red circle at the top left on a gray background"``."""
    where = "in the" if attributes["position"] == "center" else "at the"
    a = attributes
    return f"a {a['size']} {a['color']} {a['shape']} {where} {a['position']} on a {a['background']} background"


def parse_prompt(prompt: str) -> dict[str, str]:
    """Inverse of :func:`caption`. Raises ValueError on a prompt outside the vocabulary."""
    match = _PROMPT_RE.match(prompt.strip())
    if match is None:
        raise ValueError(f"prompt is not an embedded-dataset caption: {prompt!r}")
    attributes = match.groupdict()
    vocab = attribute_vocab()
    for key, value in attributes.items():
        if value not in vocab[key]:
            raise ValueError(f"unknown {key} {value!r} in prompt {prompt!r}")
    return {key: attributes[key] for key in ATTRIBUTES}


def caption_words() -> list[str]:
    """Every word any caption uses, sorted (the vocabulary of the embedded default's word-level tokenizer)."""
    return sorted({w for attributes in all_attribute_combinations() for w in caption(attributes).split()})


def max_prompt_words() -> int:
    """Words in the longest possible caption (the word-level tokenizer then needs this + 1 tokens for EOS)."""
    return max(len(caption(attributes).split()) for attributes in all_attribute_combinations())


def _shape_mask(shape: str, size: int, center: tuple[float, float], half: float) -> np.ndarray:
    """Boolean (size, size) mask of a shape, sampled at pixel centres."""
    rows, cols = np.mgrid[0:size, 0:size] + 0.5
    dy, dx = rows - center[0], cols - center[1]
    if shape == "circle":
        return dx**2 + dy**2 <= half**2
    if shape == "square":
        return (np.abs(dx) <= 0.85 * half) & (np.abs(dy) <= 0.85 * half)
    if shape == "triangle":  # apex up: width grows linearly from the top edge to the base
        return (np.abs(dy) <= half) & (np.abs(dx) <= (dy + half) / 2)
    if shape == "cross":
        arm = max(half / 3, 0.75)
        return ((np.abs(dx) <= arm) & (np.abs(dy) <= half)) | ((np.abs(dy) <= arm) & (np.abs(dx) <= half))
    raise ValueError(f"unknown shape {shape!r}; expected one of {SHAPES}")


def edge_map(mask: np.ndarray) -> np.ndarray:
    """Inner 1-px boundary of a boolean mask: mask pixels with a 4-neighbour outside it (the canvas border counts
    as outside). (H, W) bool → (H, W) bool."""
    padded = np.pad(mask, 1, constant_values=False)
    interior = padded[:-2, 1:-1] & padded[2:, 1:-1] & padded[1:-1, :-2] & padded[1:-1, 2:]
    return mask & ~interior


def render(
    attributes: dict[str, str], size: int = 32, offset: tuple[int, int] = (0, 0)
) -> tuple[np.ndarray, np.ndarray]:
    """Draw one image and its edge map.

    Args:
        attributes: ``{"shape", "color", "size", "position", "background"}`` values from :func:`attribute_vocab`.
        size: image side in pixels.
        offset: (row, col) jitter of the shape centre in pixels.

    Returns:
        image (size, size, 3) uint8 RGB and edges (size, size) uint8 (255 on the shape boundary, 0 elsewhere).
    """
    row, col = POSITIONS[attributes["position"]]
    center = (row * size + offset[0], col * size + offset[1])
    mask = _shape_mask(attributes["shape"], size, center, SIZES[attributes["size"]] * size)
    image = np.empty((size, size, 3), dtype=np.uint8)
    image[...] = BACKGROUNDS[attributes["background"]]
    image[mask] = COLORS[attributes["color"]]
    return image, edge_map(mask).astype(np.uint8) * 255


def prompt_edges(prompts: list[str], size: int, offset: tuple[int, int] = (0, 0)) -> np.ndarray:
    """The exact edge maps of the shapes ``prompts`` describe (shifted by ``offset`` px), as RGB control images
    (N, size, size, 3) uint8: what a ControlNet trained on the embedded default is asked to follow."""
    edges = np.stack([render(parse_prompt(p), size, offset)[1] for p in prompts])
    return np.repeat(edges[..., None], 3, axis=-1)


def all_attribute_combinations() -> list[dict[str, str]]:
    """Every attribute combination, in a fixed order (4·6·2·5·4 = 960)."""
    vocab = attribute_vocab()
    return [dict(zip(ATTRIBUTES, values)) for values in itertools.product(*(vocab[key] for key in ATTRIBUTES))]


def balanced_attributes(num: int, rng: np.random.Generator) -> list[dict[str, str]]:
    """``num`` combinations drawn in rounds, each round a fresh permutation of all of them, so every combination
    appears ``num // 960`` or ``num // 960 + 1`` times."""
    combos = all_attribute_combinations()
    order = np.concatenate([rng.permutation(len(combos)) for _ in range(-(-num // len(combos)))])
    return [combos[i] for i in order[:num]]


def make_embedded_data(out: str | Path, num: int, size: int = 32, seed: int = 0, jitter: int | None = None) -> Path:
    """Write ``num`` images, edge maps and ``data_info.json`` under ``out``; the same arguments give the same bytes.

    Args:
        jitter: max |offset| in pixels of the shape centre (default ``size // 32``), so repeated attribute
            combinations are not pixel-identical.

    Returns:
        the path of ``data_info.json``.
    """
    out = Path(out)
    (out / "images").mkdir(parents=True, exist_ok=True)
    (out / "edges").mkdir(parents=True, exist_ok=True)
    jitter = size // 32 if jitter is None else jitter
    rng = np.random.default_rng(seed)
    entries = []
    for i, attributes in enumerate(balanced_attributes(num, rng)):
        offset = tuple(int(v) for v in rng.integers(-jitter, jitter + 1, size=2))
        image, edges = render(attributes, size, offset)
        name = f"{i:05d}.png"
        Image.fromarray(image).save(out / "images" / name)
        Image.fromarray(edges).save(out / "edges" / name)
        entries.append(
            {
                "path": f"images/{name}",
                "prompt": caption(attributes),
                "height": size,
                "width": size,
                "ratio": 1.0,
                "control_path": f"edges/{name}",
                "attributes": attributes,
            }
        )
    info_path = out / "data_info.json"
    info_path.write_text(json.dumps(entries, indent=1))
    return info_path
