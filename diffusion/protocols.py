"""The optional parts of the contracts between packages (docs/design.md, "Optional contracts"), named once.

A network, method, dataset, batch sampler or codec offers some capabilities and not others (a ControlNet takes a
control latent, a plain PixArt does not; a feature cache reports its skipped files, a test stand-in does not). The
code that uses such a capability asks through one of these ``typing.Protocol`` classes (``isinstance`` on a
``runtime_checkable`` protocol is true when every member exists), so each optional part is declared and documented
here, not rediscovered by ``hasattr`` where it is used. Members are methods, properties or plain attributes, never
an ``nn.Module``'s submodules or buffers (Python 3.12's check does not see what ``nn.Module.__getattr__`` serves).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, Protocol, runtime_checkable

import torch
from torch import nn

# ---- networks (diffusion/model): what Pipeline, the methods, the trainer and the loaders ask of a model ----


@runtime_checkable
class ControlledModel(Protocol):
    """A ControlNet (``diffusion.model.controlnet``): ``model(x, t, y, mask, data_info, c=c)`` takes a control latent
    ``c`` (B or 1, C, H, W); ``model.base_model`` is the frozen network it wraps, whose weights come from
    ``weights.base``; ``trainable_state_dict()`` the copies' weights alone. Only such a model is given ``c``."""

    accepts_control: bool  # True: a class attribute, so a plain model simply lacks it

    def embed_control(self, c: torch.Tensor, x: torch.Tensor, like: torch.Tensor) -> torch.Tensor: ...

    def trainable_state_dict(self) -> dict[str, torch.Tensor]: ...


@runtime_checkable
class CaptionEncoder(Protocol):
    """A network with the sampling fast path: ``caption = model.encode_caption(y, mask)`` (caption projection and
    every block's cross-attention K/V, once per prompt batch), then ``model(x, t, None, None, data_info,
    caption=caption)`` equal to the plain call. A network without it is called the plain way."""

    def encode_caption(self, y: torch.Tensor, mask: torch.Tensor | None = None) -> Any: ...


@runtime_checkable
class CaptionKVBlock(Protocol):
    """A transformer block whose cross-attention K/V of the caption tokens (B, L, C) are computed apart
    (``caption_kv``), outside ``forward``: FSDP2 must gather the block's shards around that call too."""

    def caption_kv(self, tokens: torch.Tensor) -> torch.Tensor: ...


@runtime_checkable
class FSDPUnits(Protocol):
    """A network that names its own FSDP2 units (a ControlNet: its trainable copies); any other network is sharded
    block by block (``model.blocks``)."""

    @property
    def fsdp_wrap_modules(self) -> list[nn.Module]: ...


def base_network(model: nn.Module) -> nn.Module:
    """The network that holds the embedders and sizes: a ControlNet's frozen ``base_model``, else ``model``."""
    return model.base_model if isinstance(model, ControlledModel) else model


def embeds_guidance(model: nn.Module) -> bool:
    """A w-embedding LCM student (``PixArt(guidance_embedding=True)``, or a ControlNet over one): its forward reads
    ``data_info["guidance"]`` = w (diffusers' ``guidance_scale - 1``). ``w_embedder`` is None on every other PixArt;
    a network of another kind (a test stand-in) has none."""
    return getattr(model, "w_embedder", None) is not None


# ---- methods (diffusion/methods) ----


@runtime_checkable
class FreezesNetworks(Protocol):
    """A method that runs networks without gradients (the LCM teacher and target): the trainer shards them on the
    model's mesh under FSDP. ``diffusion.methods.base.Method`` returns ``[]``."""

    def frozen_networks(self) -> list[nn.Module]: ...


# ---- datasets and batch samplers (diffusion/data, read by diffusion/engine) ----


@runtime_checkable
class ReportsSkips(Protocol):
    """A dataset that replaces unreadable items and says so: ``skipped`` (items skipped so far in this process) and
    ``report()`` (a text naming the skipped files with their reasons), logged per run and per epoch."""

    skipped: int

    def report(self) -> str: ...


@runtime_checkable
class NotesSkips(Protocol):
    """A dataset whose items loaded in DataLoader workers carry ``skipped`` (file, reason) pairs: the main process
    hands them to ``note_skipped`` so that its counts include the workers'."""

    def note_skipped(self, items: Iterable) -> None: ...


@runtime_checkable
class Collates(Protocol):
    """A dataset with its own ``collate(items) -> batch`` (``FeatureDataset`` names ``diffusion.data.collate``, the
    fallback for any other)."""

    def collate(self, items: list[dict]) -> dict: ...


@runtime_checkable
class PreparesBatches(Protocol):
    """A dataset with its own ``prepare_batch(batch, scale_factor, generator)`` (``FeatureDataset`` names
    ``diffusion.data.prepare_batch``, the fallback for any other)."""

    def prepare_batch(self, batch: dict, scale_factor: float, generator: torch.Generator | None) -> dict: ...


@runtime_checkable
class FeatureCache(Protocol):
    """A dataset read from feature caches (``FeatureDataset``): the pre-run checks compare each cache folder's
    ``meta.json`` (``latent_dir``, ``control_dir`` when ``load_control``, the captions under ``root``) with the
    config."""

    root: Any
    latent_dir: Any
    control_dir: Any
    load_control: bool


@runtime_checkable
class ImageDataset(Protocol):
    """A dataset of images and captions encoded in the training step (``ShardDataset``): ``yields == "images"``
    (a dataset without ``yields``, or with ``"features"``, is read as cached features), ``spec`` its read settings
    (``resolution``, ``multi_scale``, ``load_control``: the shards' control images) and ``stream(batch_size, rank,
    world_size, num_workers, seed)`` the endless batch iterator of one rank."""

    yields: str
    spec: Any

    def stream(
        self, batch_size: int, rank: int = 0, world_size: int = 1, num_workers: int = 0, seed: int = 0
    ) -> Any: ...


def yields_images(dataset: object) -> bool:
    """Whether the trainer encodes ``dataset``'s batches in the step (:class:`ImageDataset`)."""
    return isinstance(dataset, ImageDataset) and dataset.yields == "images"


@runtime_checkable
class EpochAware(Protocol):
    """A batch sampler told the epoch before each one (``set_epoch``, as torch's DistributedSampler)."""

    def set_epoch(self, epoch: int) -> None: ...


@runtime_checkable
class Describes(Protocol):
    """A batch sampler (or stream) with a one-line ``describe()`` for error messages and ``train.log``."""

    def describe(self) -> str: ...


# ---- codecs (diffusion/data/codec.py) ----


@runtime_checkable
class LeanDecoder(Protocol):
    """A codec that can decode with less memory (the VAE's slicing and tiling): ``load_pipeline(lean=True)``."""

    def set_lean_decode(self, enabled: bool = True) -> None: ...
