"""The optional contracts of diffusion/protocols.py against every registered class: each model, method, dataset,
batch sampler and codec offers exactly the capabilities the engine, the pipeline and the loaders use it through,
and the test stand-ins (which offer none of them) take the fallbacks."""

import json

import pytest
import torch

import diffusion.build  # noqa: F401 (registers every model, method, dataset and codec)
import diffusion.data
from diffusion.data.dataset import FeatureDataset
from diffusion.data.embedded import make_embedded_data
from diffusion.data.shards import ShardDataset, make_shards
from diffusion.engine.data_loop import EpochBatchSampler
from diffusion.methods.base import Method, needs_teacher
from diffusion.protocols import (
    CaptionEncoder,
    CaptionKVBlock,
    Collates,
    ControlledModel,
    Describes,
    EpochAware,
    FeatureCache,
    FreezesNetworks,
    FSDPUnits,
    ImageDataset,
    LeanDecoder,
    NotesSkips,
    PreparesBatches,
    ReportsSkips,
    base_network,
    embeds_guidance,
    yields_images,
)
from diffusion.registry import CODECS, DATA_SAMPLERS, DATASETS, METHODS, MODELS
from tests.engine.standins import MemDataset, MSELoss, TinyNet


def _library(registry, module: str = "diffusion.") -> list[str]:
    """The registry's names of library classes (the test stand-ins are registered beside them once imported)."""
    return [name for name, cls in registry.module_dict.items() if cls.__module__.startswith(module)]


SIZES = _library(MODELS, "diffusion.model.sizes")
CONTROLNETS = _library(MODELS, "diffusion.model.controlnet")


def _meta_model(name: str, **kwargs) -> torch.nn.Module:
    with torch.device("meta"):  # the architecture only: no memory, no weights
        return MODELS.build(dict(type=name, **kwargs))


@pytest.mark.parametrize("name", SIZES)
def test_every_registered_network_offers_the_caption_fast_path_and_no_control(name):
    model = _meta_model(name)
    assert isinstance(model, CaptionEncoder) and all(isinstance(b, CaptionKVBlock) for b in model.blocks)
    assert not isinstance(model, ControlledModel) and not isinstance(model, FSDPUnits)
    assert base_network(model) is model and not embeds_guidance(model)
    assert embeds_guidance(_meta_model(name, guidance_embedding=True))  # the w-embedding LCM student


@pytest.mark.parametrize("name", CONTROLNETS)
@pytest.mark.parametrize("guidance", [False, True])
def test_every_registered_controlnet_takes_control_over_its_base(name, guidance):
    base = _meta_model("PixArt_tiny", guidance_embedding=guidance)
    with torch.device("meta"):
        model = MODELS.build(dict(type=name, base_model=base, copy_blocks=1))
    assert isinstance(model, ControlledModel) and model.accepts_control
    assert isinstance(model, CaptionEncoder) and isinstance(model, FSDPUnits)
    assert base_network(model) is model.base_model is base
    assert embeds_guidance(model) == guidance  # a ControlNet over a w-embedding student embeds w too


def test_a_stand_in_network_is_called_the_plain_way():
    model = TinyNet()
    assert not isinstance(model, CaptionEncoder | ControlledModel | FSDPUnits)
    assert base_network(model) is model and not embeds_guidance(model)


@pytest.mark.parametrize("name", _library(METHODS))
def test_every_registered_method_is_a_method(name):
    cls = METHODS.get(name)
    assert issubclass(cls, Method) and issubclass(cls, FreezesNetworks)
    assert needs_teacher(cls) == (name == "LCMDistillation")


def test_a_stand_in_method_has_no_frozen_networks_and_distils_nothing():
    assert not issubclass(MSELoss, FreezesNetworks)
    assert not needs_teacher(MSELoss) and not needs_teacher(None)


@pytest.fixture(scope="module")
def datasets(tmp_path_factory):
    """A FeatureDataset over empty feature files (its constructor checks only that they exist) and a ShardDataset
    of the embedded default's first items."""
    root = tmp_path_factory.mktemp("protocols")
    (root / "features" / "caption_features").mkdir(parents=True)
    (root / "features" / "vae_features_16").mkdir()
    (root / "features" / "data_info.json").write_text(
        json.dumps([dict(path="a.png", prompt="x", height=16, width=16)])
    )
    (root / "features" / "caption_features" / "a.npz").touch()
    (root / "features" / "vae_features_16" / "a.npy").touch()
    make_embedded_data(root / "images", 4, size=32)
    make_shards(root / "images", root / "shards", per_shard=4, progress=False)
    features = DATASETS.build(dict(type="FeatureDataset", root=str(root / "features"), resolution=16, max_length=8))
    shards = DATASETS.build(dict(type="ShardDataset", urls=str(root / "shards" / "00000.tar"), resolution=32))
    return features, shards


def test_each_registered_dataset_declares_what_it_yields(datasets):
    features, shards = datasets
    assert {type(features), type(shards)} == {DATASETS.get(name) for name in _library(DATASETS)}
    assert isinstance(features, FeatureDataset) and isinstance(shards, ShardDataset)
    for dataset in datasets:  # both replace unreadable items and say so, also for items read in workers
        assert isinstance(dataset, ReportsSkips) and isinstance(dataset, NotesSkips)
    # a feature cache's batches are the data package's contract functions; a shard stream's are encoded in the step
    assert features.collate is diffusion.data.collate and features.prepare_batch is diffusion.data.prepare_batch
    assert isinstance(features, Collates | PreparesBatches) and not isinstance(shards, Collates | PreparesBatches)
    assert isinstance(features, FeatureCache) and not isinstance(features, ImageDataset)
    assert not yields_images(features)
    assert isinstance(shards, ImageDataset) and not isinstance(shards, FeatureCache) and yields_images(shards)


def test_a_stand_in_dataset_brings_its_batch_functions_and_nothing_else():
    dataset = MemDataset()
    assert isinstance(dataset, Collates) and isinstance(dataset, PreparesBatches)
    assert not isinstance(dataset, ReportsSkips | NotesSkips | FeatureCache | ImageDataset)
    assert not yields_images(dataset)


def test_the_batch_samplers_are_told_the_epoch():
    (name,) = _library(DATA_SAMPLERS)
    for cls in (DATA_SAMPLERS.get(name), EpochBatchSampler):
        assert issubclass(cls, EpochAware)
    assert issubclass(DATA_SAMPLERS.get(name), Describes)


def test_only_the_vae_codec_decodes_lean():
    assert {name for name in _library(CODECS) if issubclass(CODECS.get(name), LeanDecoder)} == {"AutoencoderKLCodec"}
