"""Where the trainer's batches come from, as one object: the batches of this rank, the prepared batch
``{x0, y, y_mask, data_info, prompt[, c]}`` the methods consume, the data position a checkpoint holds, and what the
log says about the data. The trainer never branches on which kind it has (nor on the method).

What the dataset yields (its ``yields`` attribute) decides the kind:

- ``"features"`` (``FeatureDataset``, the α recipe and the default): cached T5 features and codec posteriors, read
  by a map-style sampler (:mod:`~diffusion.engine.data_loop`); :class:`FeatureBatches` samples the latents from the
  cached posteriors (``prepare_batch``);
- ``"images"`` (``ShardDataset``): images and captions from WebDataset shards, read by the dataset's own resumable
  stream; :class:`EncodedBatches` runs the frozen codec and text encoder of the config in the training step
  (:class:`~diffusion.data.encoding.BatchEncoder`, settings in the config's ``encoding`` section).
"""

from collections.abc import Iterator

import torch
from torch import nn

from diffusion.config import resolve_section
from diffusion.engine import dist, preflight
from diffusion.engine import resume as on_resume
from diffusion.engine.data_loop import build_stream, describe_data, epoch_report, to_device
from diffusion.engine.metrics import MetricLogger
from diffusion.protocols import ImageDataset, PreparesBatches, ReportsSkips, base_network, yields_images
from diffusion.registry import CODECS, DATASETS

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


class FeatureBatches:
    """Batches of a dataset of cached features (``FeatureDataset``, or a test stand-in with its own ``collate`` /
    ``prepare_batch``): latents sampled from the cached posterior as ``(mean + std·ε)·scale_factor``."""

    notes: list[str]

    def __init__(self, cfg, train_cfg: dict, rank: int, world: int, device: torch.device, logger: MetricLogger,
                 dataset) -> None:  # fmt: skip
        import diffusion.data

        for note in preflight.check_caches(cfg, dataset, info=logger.info):  # before step 1
            logger.warning(note)
        if cfg.get("encoding"):
            logger.warning(
                f"the config's encoding section is not used: data.type {type(dataset).__name__} yields cached "
                "features (on-the-fly encoding is for a dataset of images, e.g. ShardDataset)"
            )
        codec = cfg.codec
        self.scale_factor = codec["scale_factor"] if "scale_factor" in codec else CODECS.build(codec).scale_factor
        # a dataset may bring its own batch functions (test stand-ins do); otherwise the data package's contract ones
        self.prepare_batch = (
            dataset.prepare_batch if isinstance(dataset, PreparesBatches) else diffusion.data.prepare_batch
        )
        self.dataset, self.device, self.logger, self.notes = dataset, device, logger, []
        self.batch_size, self.world = train_cfg["batch_size"], world
        self.stream = build_stream(dataset, cfg.get("data_sampler"), train_cfg, rank, world)
        self.stream.on_epoch = lambda epoch: logger.info(epoch_report(self.stream, epoch, self.batch_size, world))

    def __iter__(self) -> Iterator[dict]:
        return iter(self.stream)

    def prepare(self, batch: dict, generator: torch.Generator) -> dict:
        return self.prepare_batch(to_device(batch, self.device), self.scale_factor, generator)

    def frozen_networks(self, parallel: str) -> list[nn.Module]:
        return []

    def check_model(self, model: nn.Module) -> None:
        """Nothing to check: the caches' own checks ran when the dataset was built (preflight.check_caches)."""

    def describe(self) -> str:
        return describe_data(self.dataset, self.stream.batch_sampler, self.batch_size, self.world)

    def summary(self) -> str | None:
        """The dataset's report when it skipped anything (logged at the end of a run), else None."""
        return self.dataset.report() if isinstance(self.dataset, ReportsSkips) and self.dataset.skipped else None

    def state_dict(self) -> dict:
        return self.stream.state_dict()

    def load_state_dict(self, state: dict, saved_run: dict, run: dict) -> None:
        """The saved position, rescaled to a changed per-step batch; a shard stream's position (the run switched
        from shards to caches) starts this dataset from its beginning, noted in ``notes``."""
        if state.get("kind") == "shards":
            self.notes.append(
                "the checkpoint's data position is a shard stream's (data.type was ShardDataset): the feature "
                "dataset starts from its first epoch"
            )
            return
        self.stream.load_state_dict(on_resume.rescale_data_position(state, saved_run, run))


class EncodedBatches:
    """Batches of a dataset of images and captions (``ShardDataset``), encoded in the training step by the config's
    frozen codec and text encoder (eval mode, no gradients, weights in ``encoding.dtype``), with a ControlNet's
    control from the shard (``data.load_control``) or ``encoding.annotator``."""

    notes: list[str]
    sharded: bool = False  # T5 sharded on the FSDP mesh: set by frozen_networks()

    def __init__(self, cfg, train_cfg: dict, rank: int, world: int, device: torch.device, logger: MetricLogger,
                 dataset) -> None:  # fmt: skip
        self.settings = settings = resolve_section("encoding", cfg.get("encoding"))
        if cfg.get("data_sampler"):
            logger.warning(f"data_sampler is not used: {type(dataset).__name__} buckets its samples itself "
                           "(data.multi_scale)")  # fmt: skip
        self.dataset, self.device, self.logger, self.notes = dataset, device, logger, []
        self.dtype = self._dtype(settings["dtype"], device)
        annotator = self._annotator(cfg, settings, dataset)
        self.encoder = build_encoder(cfg, device, self.dtype, annotator)
        self.scale_factor = self.encoder.scale_factor
        self.stream = dataset.stream(train_cfg["batch_size"], rank, world, train_cfg["num_workers"], train_cfg["seed"])
        self.stream.on_epoch = lambda epoch: self._epoch_report(epoch)

    @staticmethod
    def _dtype(name: str, device: torch.device) -> torch.dtype:
        if name == "auto":
            return torch.bfloat16 if device.type == "cuda" and dist.native_bf16(device) else torch.float32
        return DTYPES[name]

    @staticmethod
    def _annotator(cfg, settings: dict, dataset) -> nn.Module | None:
        """``encoding.annotator``'s network, or None; a ControlNet without a control source is an error."""
        controlnet = bool(cfg.get("controlnet"))
        load_control = dataset.spec.load_control if isinstance(dataset, ImageDataset) else False
        if settings["annotator"] is None:
            if controlnet and not load_control:
                raise KeyError(
                    "a ControlNet run needs its control: set data.load_control=True (the shards' {key}.control "
                    "images) or encoding.annotator='hed' / 'canny' (a map of each image, made on the fly)"
                )
            return None
        if load_control:
            raise KeyError(
                f"encoding.annotator={settings['annotator']!r} makes the control from each image, but "
                "data.load_control=True also reads the shards' control images: set one of them"
            )
        if not controlnet:
            raise KeyError(f"encoding.annotator={settings['annotator']!r} makes control maps, but the config has no "
                           "controlnet section")  # fmt: skip
        from diffusion.data.annotators import build_annotator

        keys = ("hed_path", "canny_low", "canny_high")
        return build_annotator(settings["annotator"], *(settings[k] for k in keys), settings["canny_l2_gradient"])

    def __iter__(self) -> Iterator[dict]:
        return iter(self.stream)

    def prepare(self, batch: dict, generator: torch.Generator) -> dict:
        return self.encoder(batch, generator)

    def frozen_networks(self, parallel: str) -> list[nn.Module]:
        """T5, for the trainer to shard on the model's mesh (``encoding.shard_text_encoder``; by default under
        ``train.parallel='fsdp'``), block by block like the model: no rank then holds all of T5-XXL."""
        shard = self.settings["shard_text_encoder"]
        self.sharded = bool(parallel == "fsdp" if shard is None else shard) and dist.world_size() > 1
        if not self.sharded:
            return []
        t5 = self.encoder.text_encoder.model
        t5.fsdp_wrap_modules = list(t5.encoder.block)  # what parallel.wrap shards one by one, then the root
        return [t5]

    def check_model(self, model: nn.Module) -> None:
        """The text encoder's width and length against the model's ``caption_channels`` / ``model_max_length`` (a
        mismatch would otherwise fail at the first forward)."""
        base = base_network(model)
        te = self.encoder.text_encoder
        for attr, value, key in (("caption_channels", te.caption_channels, "text_encoder.path"),
                                 ("model_max_length", te.max_length, "text_encoder.max_length")):  # fmt: skip
            expected = getattr(base, attr, None)
            if expected is not None and expected != value:
                raise ValueError(
                    f"the text encoder gives {attr.split('_')[-1]} {value} ({key}), but model.{attr} is {expected}"
                )

    def describe(self) -> str:
        codec = type(self.encoder.codec).__name__
        control = ""
        if self.settings["annotator"]:
            control = f", control: {self.settings['annotator']} maps of the images, made on the fly"
        elif self.dataset.spec.load_control:
            control = ", control: the shards' control images"
        sharded = " (sharded on the FSDP mesh)" if self.sharded else ""
        return (
            f"on-the-fly encoding: {codec} (scale {self.scale_factor:g}) and T5 {self.encoder.text_encoder.path}"
            f"{sharded} in {str(self.dtype).removeprefix('torch.')}{control}\n{self.stream.describe()}"
        )

    def _epoch_report(self, epoch: int) -> None:
        """As an epoch after the first starts: the last finished epoch's line and, when anything was skipped, the
        names (the first epoch's start has :meth:`describe`)."""
        if self.stream.last_epoch is None:
            return
        self.logger.info(self.stream.epoch_report())
        summary = self.summary()
        if summary is not None:
            self.logger.warning(summary)

    def summary(self) -> str | None:
        return self.dataset.report() if self.dataset.skipped else None

    def state_dict(self) -> dict:
        """Every rank's stream position: a collective under torch.distributed (every rank calls it)."""
        return self.stream.state_dict()

    def load_state_dict(self, state: dict, saved_run: dict, run: dict) -> None:
        """Continue the stream exactly; a position saved by a feature dataset starts the shards from their first
        epoch (noted); one saved with another layout (ranks, loader workers, seed, shard list) is refused with the
        options, or starts the next epoch with ``data.on_layout_change='next_epoch'`` (noted)."""
        if state.get("kind") != "shards":
            self.notes.append(
                "the checkpoint's data position is a feature dataset's (data.type was FeatureDataset): the shards "
                "start from their first epoch"
            )
            return
        try:
            self.stream.load_state_dict(state)
        except ValueError as error:
            ranks = state.get("world_size")
            raise ValueError(
                f"{error}.\nTo resume exactly: launch {ranks} rank(s) (torchrun --nproc_per_node ... --nnodes ... "
                f"giving {ranks} in all) with train.num_workers giving {state.get('readers')} loader reader(s) per "
                f"rank (0 and 1 both give 1) and train.seed={state.get('seed')}; or add --cfg-options "
                "data.on_layout_change=next_epoch to go on from the next epoch"
            ) from error
        self.notes.extend(self.stream.notes)


def build_encoder(cfg, device: torch.device, dtype: torch.dtype, annotator: nn.Module | None = None):
    """The :class:`~diffusion.data.encoding.BatchEncoder` of ``cfg``: its codec and text encoder on ``device``, their
    weights in ``dtype`` (a codec without weights, e.g. ``PixelCodec``, computes in float32)."""
    import inspect

    from diffusion.build import build_text_encoder
    from diffusion.data.encoding import BatchEncoder

    codec_cfg = dict(cfg["codec"])
    if "dtype" in inspect.signature(CODECS.get(codec_cfg["type"]).__init__).parameters:
        codec_cfg["dtype"] = dtype
    codec = CODECS.build(codec_cfg)
    codec = codec.to(device) if hasattr(codec, "to") else codec
    text_encoder = build_text_encoder(cfg, device, dtype)
    if annotator is not None:
        annotator = annotator.to(device).eval().requires_grad_(False)
    return BatchEncoder(codec, text_encoder, codec.scale_factor, device, annotator)


def build_data_source(cfg, train_cfg: dict, rank: int, world: int, device: torch.device, logger: MetricLogger):
    """``cfg.data``'s dataset and the data source over it: :class:`EncodedBatches` for a dataset that yields images
    (``dataset.yields == "images"``), else :class:`FeatureBatches`. ``train_cfg``: the resolved ``train`` section."""
    dataset = DATASETS.build(cfg.data)
    kind = EncodedBatches if yields_images(dataset) else FeatureBatches
    return kind(cfg, train_cfg, rank, world, device, logger, dataset)
