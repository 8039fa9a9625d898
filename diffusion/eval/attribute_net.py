"""A small attribute classifier for the embedded shapes data: prompt-attribute accuracy and the FID feature network.

PixArt-δ (paper §3.3, Fig. 2 and §5) compares the LCM student with the teacher by FID (InceptionV3 features) and CLIP
score. Neither network can be downloaded here, so on the embedded 32×32 shapes data (``diffusion/data/embedded.py``)
both roles are played by this CNN trained on freshly rendered images: its five heads (shape, color, size, position,
background) check that an image shows what its caption says (the CLIP-score stand-in), and its pooled penultimate
layer is the feature space of the embedded FID. Its numbers are comparable only with each other, never with
Inception FID.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import nn

from diffusion.data.embedded import ATTRIBUTES, attribute_vocab, parse_prompt, render

DEFAULT_PATH = "output/eval/attribute_net.safetensors"
IMAGE_SIZE = 32
WIDTHS = (32, 64, 128, 160)


class AttributeNet(nn.Module):
    """CNN over RGB + a soft foreground mask + two coordinate channels: a 2×2 stride-2 patch conv, a 3×3 conv and two
    3×3 stride-2 convs (GroupNorm + SiLU), global average pooling and one linear head per attribute.

    The mask (distance of each pixel's colour from the background colour, the median of the border pixels) makes the
    shape's outline colour-independent, and the coordinate channels let the pooled features encode position and
    size; both make the net learn in a few hundred steps.

    Args:
        widths: channels of the four conv layers; the last one is the feature dimension ``dim``.
        vocab: ``{attribute: [values]}`` (default: :func:`attribute_vocab`).
        image_size: side the network sees; other sizes are resized (area / bilinear) first.
        mask_threshold, mask_softness: colour distance (RGB in [0, 1]) at which the mask is 0.5, and its slope width.
    """

    def __init__(
        self,
        widths: Sequence[int] = WIDTHS,
        vocab: dict[str, list[str]] | None = None,
        image_size: int = IMAGE_SIZE,
        mask_threshold: float = 0.15,
        mask_softness: float = 0.03,
    ) -> None:
        super().__init__()
        self.vocab = dict(vocab or attribute_vocab())
        self.widths, self.image_size, self.dim = tuple(widths), image_size, widths[-1]
        self.mask_threshold, self.mask_softness = mask_threshold, mask_softness
        layers, in_ch = [], 3 + 1 + 2
        for i, out_ch in enumerate(widths):
            conv = nn.Conv2d(in_ch, out_ch, 2, stride=2) if i == 0 else nn.Conv2d(in_ch, out_ch, 3, 1 + (i > 1), 1)
            layers += [conv, nn.GroupNorm(8, out_ch), nn.SiLU()]
            in_ch = out_ch
        self.body = nn.Sequential(*layers)
        self.heads = nn.ModuleDict({key: nn.Linear(self.dim, len(values)) for key, values in self.vocab.items()})
        coords = torch.linspace(-1, 1, image_size)
        grid = torch.stack(torch.meshgrid(coords, coords, indexing="ij"))  # (2, S, S): row, col
        self.register_buffer("grid", grid[None], persistent=False)

    def prepare(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 (N,3,H,W) in [0,255] or float in [0,1] → network input (N, 6, S, S): RGB - 0.5, mask, coords."""
        images = images.to(self.grid.device)
        x = images.float() / 255 if images.dtype == torch.uint8 else images.float()
        if x.shape[-2:] != (self.image_size, self.image_size):
            mode = "area" if x.shape[-1] > self.image_size else "bilinear"
            x = F.interpolate(x, size=(self.image_size, self.image_size), mode=mode)
        border = torch.cat([x[:, :, 0], x[:, :, -1], x[:, :, :, 0], x[:, :, :, -1]], dim=2)  # (N, 3, 4S)
        background = border.median(dim=2).values[:, :, None, None]  # (N, 3, 1, 1)
        distance = (x - background).square().sum(1, keepdim=True).sqrt()  # (N, 1, S, S)
        mask = torch.sigmoid((distance - self.mask_threshold) / self.mask_softness)
        return torch.cat([x - 0.5, mask, self.grid.expand(x.shape[0], -1, -1, -1)], dim=1)

    def features(self, images: torch.Tensor) -> torch.Tensor:
        """Pooled penultimate features (N, dim) of uint8 (N,3,H,W) or float [0,1] images: the embedded FID space."""
        return self.body(self.prepare(images)).mean(dim=(2, 3))  # (N, dim)

    def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        """``{attribute: logits (N, len(vocab[attribute]))}``."""
        h = self.features(images)
        return {key: head(h) for key, head in self.heads.items()}

    @torch.no_grad()
    def predict(self, images: torch.Tensor, batch_size: int = 256) -> dict[str, list[str]]:
        """``{attribute: [predicted value per image]}`` for uint8 (N,3,H,W) images."""
        was_training = self.training
        self.eval()
        indices = {key: [] for key in self.vocab}
        for start in range(0, images.shape[0], batch_size):
            for key, logits in self(images[start : start + batch_size]).items():
                indices[key] += logits.argmax(1).tolist()
        self.train(was_training)
        return {key: [self.vocab[key][i] for i in idx] for key, idx in indices.items()}


def render_batch(
    rng: np.random.Generator, num: int, max_offset: int, size: int = IMAGE_SIZE
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """``num`` renders with uniformly random attributes and centre offsets in [-max_offset, max_offset] pixels.

    Returns:
        images uint8 (num, 3, size, size) and ``{attribute: label indices (num,)}``.
    """
    vocab = attribute_vocab()
    labels = {key: rng.integers(0, len(values), size=num) for key, values in vocab.items()}
    offsets = rng.integers(-max_offset, max_offset + 1, size=(num, 2))
    images = np.empty((num, size, size, 3), dtype=np.uint8)
    for i in range(num):
        attributes = {key: vocab[key][labels[key][i]] for key in ATTRIBUTES}
        images[i] = render(attributes, size, (int(offsets[i, 0]), int(offsets[i, 1])))[0]
    return torch.from_numpy(images).permute(0, 3, 1, 2).contiguous(), {
        k: torch.from_numpy(v) for k, v in labels.items()
    }


def augment(images: torch.Tensor, generator: torch.Generator, max_noise: float = 0.06) -> torch.Tensor:
    """Make clean uint8 renders look like generated samples: per-image colour gain/shift, a random partial 3×3 blur
    and Gaussian pixel noise of random strength. uint8 (N,3,H,W) → float (N,3,H,W) in [0,1]."""
    x = images.float() / 255
    n = x.shape[0]

    def rand(*shape):
        return torch.rand(*shape, generator=generator)

    x = x * (1 + 0.1 * (rand(n, 3, 1, 1) - 0.5)) + 0.08 * (rand(n, 3, 1, 1) - 0.5)
    blurred = F.avg_pool2d(F.pad(x, (1, 1, 1, 1), mode="replicate"), 3, stride=1)
    x = x + (blurred - x) * (rand(n, 1, 1, 1) < 0.5) * rand(n, 1, 1, 1)
    x = x + max_noise * rand(n, 1, 1, 1) * torch.randn(x.shape, generator=generator)
    return x.clamp(0, 1)


@torch.no_grad()
def label_accuracy(
    net: AttributeNet, images: torch.Tensor, labels: dict[str, torch.Tensor], batch_size: int = 256
) -> dict[str, float]:
    """Per-attribute accuracy and the all-attributes-correct rate ``"all"`` of ``net`` on uint8 (N,3,H,W) images
    with label indices ``{attribute: (N,)}``."""
    predicted = net.predict(images, batch_size)
    correct = {
        key: torch.tensor([net.vocab[key].index(p) for p in predicted[key]]) == labels[key] for key in net.vocab
    }
    result = {key: c.float().mean().item() for key, c in correct.items()}
    result["all"] = torch.stack(list(correct.values())).all(0).float().mean().item()
    return result


def train_attribute_net(
    out_path: str | Path = DEFAULT_PATH,
    num: int = 16384,
    steps: int = 400,
    batch_size: int = 64,
    lr: float = 3e-3,
    max_offset: int = 2,
    num_heldout: int = 2048,
    widths: Sequence[int] = WIDTHS,
    shape_weight: float = 2.0,
    seed: int = 0,
) -> AttributeNet:
    """Train an :class:`AttributeNet` on ``num`` fresh renders (random attributes, centre jitter up to ``max_offset``
    px, :func:`augment` on every batch) for ``steps`` AdamW steps with a one-cycle schedule, then save
    ``out_path`` (safetensors) and ``out_path.with_suffix('.json')`` (vocab, widths, held-out accuracy on
    ``num_heldout`` clean renders with the dataset's ±1 px jitter, training time). ``widths`` as in
    :class:`AttributeNet` (tests use a narrower one); the shape loss, learned last, is weighted by
    ``shape_weight``. Deterministic for a given seed; the global RNG state is left untouched."""
    start = time.perf_counter()
    rng = np.random.default_rng(seed)
    images, labels = render_batch(rng, num, max_offset)
    heldout_images, heldout_labels = render_batch(np.random.default_rng(seed + 1), num_heldout, max_offset=1)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        net = AttributeNet(widths)
        generator = torch.Generator().manual_seed(seed)
        optimizer = torch.optim.AdamW(net.parameters(), lr=lr, weight_decay=1e-4)
        schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=lr, total_steps=steps, pct_start=0.15)
        net.train()
        for _ in range(steps):
            idx = torch.randint(0, num, (batch_size,), generator=generator)
            logits = net(augment(images[idx], generator))
            loss = sum(
                F.cross_entropy(logits[k], labels[k][idx]) * (shape_weight if k == "shape" else 1) for k in net.vocab
            )
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
    net.eval()
    accuracy = label_accuracy(net, heldout_images, heldout_labels)
    meta = {
        "note": "embedded-data attribute classifier; its features give an embedded FID, not comparable to Inception",
        "vocab": net.vocab,
        "widths": list(net.widths),
        "image_size": net.image_size,
        "heldout_accuracy": accuracy,
        "train": {
            "num": num,
            "steps": steps,
            "batch_size": batch_size,
            "lr": lr,
            "seed": seed,
            "cpu_threads": torch.get_num_threads(),
        },
        "train_seconds": round(time.perf_counter() - start, 2),
    }
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in net.state_dict().items()}, str(out_path))
    out_path.with_suffix(".json").write_text(json.dumps(meta, indent=1))
    return net


def load_attribute_net(path: str | Path = DEFAULT_PATH, device: str | torch.device = "cpu") -> AttributeNet:
    """An :class:`AttributeNet` in eval mode from ``path`` and its ``.json`` side file."""
    path = Path(path)
    meta_path = path.with_suffix(".json")
    if not path.is_file() or not meta_path.is_file():
        raise FileNotFoundError(f"attribute net not found: {path} (and {meta_path.name}); see ensure_attribute_net")
    meta = json.loads(meta_path.read_text())
    if meta["vocab"] != attribute_vocab():
        raise ValueError(f"{meta_path} was trained on another attribute vocabulary; retrain it")
    net = AttributeNet(meta["widths"], meta["vocab"], meta["image_size"])
    net.load_state_dict(load_file(str(path)))
    return net.to(device).eval()


def ensure_attribute_net(
    path: str | Path = DEFAULT_PATH, device: str | torch.device = "cpu", **train_kwargs
) -> AttributeNet:
    """Load the attribute net at ``path``, training it first (deterministically, ``train_kwargs`` passed on) if
    it is missing."""
    path = Path(path)
    if not (path.is_file() and path.with_suffix(".json").is_file()):
        train_attribute_net(path, **train_kwargs)
    return load_attribute_net(path, device)


def attribute_accuracy(
    net: AttributeNet, images: torch.Tensor, prompts: Sequence[str], batch_size: int = 256
) -> dict[str, float]:
    """Prompt-attribute accuracy of images against their embedded-dataset captions.

    Args:
        images: uint8 (N, 3, H, W).
        prompts: N captions understood by :func:`parse_prompt` (anything else is a ValueError).

    Returns:
        ``{attribute: fraction of images whose predicted value matches the caption, "all": fraction with every
        attribute right}``.
    """
    if len(prompts) != images.shape[0]:
        raise ValueError(f"{images.shape[0]} images but {len(prompts)} prompts")
    wanted = [parse_prompt(p) for p in prompts]
    labels = {key: torch.tensor([net.vocab[key].index(w[key]) for w in wanted]) for key in net.vocab}
    return label_accuracy(net, images, labels, batch_size)
