"""diffusion/eval/attribute_net.py: a briefly trained net beats chance, scores true captions above shuffled ones,
round-trips through its files; the default architecture stays small."""

import json

import numpy as np
import pytest
import torch

from diffusion.data.embedded import attribute_vocab
from diffusion.eval.attribute_net import (
    AttributeNet,
    attribute_accuracy,
    ensure_attribute_net,
    label_accuracy,
    load_attribute_net,
    render_batch,
)
from diffusion.eval.images import read_sample_folder
from tests.eval.helpers import render_folder, tiny_attribute_net


@pytest.fixture(scope="module")
def net_path(tmp_path_factory):
    return tiny_attribute_net(tmp_path_factory)


def test_default_net_is_small_and_pools_to_its_feature_dim():
    net = AttributeNet()
    assert 100_000 <= sum(p.numel() for p in net.parameters()) <= 300_000
    images = torch.randint(0, 256, (3, 3, 32, 32), dtype=torch.uint8)
    assert net.features(images).shape == (3, net.dim)
    torch.testing.assert_close(net.features(images), net.features(images.float() / 255))
    logits = net(torch.randint(0, 256, (2, 3, 64, 64), dtype=torch.uint8))  # other sizes are resized
    assert {k: v.shape[1] for k, v in logits.items()} == {k: len(v) for k, v in attribute_vocab().items()}


def test_short_training_beats_chance_on_clean_renders(net_path):
    net = load_attribute_net(net_path)
    images, labels = render_batch(np.random.default_rng(123), 256, max_offset=1)
    accuracy = label_accuracy(net, images, labels)
    chance = {k: 1 / len(v) for k, v in attribute_vocab().items()}
    assert np.mean([accuracy[k] - chance[k] for k in chance]) > 0.1, accuracy
    assert max(accuracy[k] for k in chance) > 0.8, accuracy
    saved = json.loads(net_path.with_suffix(".json").read_text())["heldout_accuracy"]
    assert set(saved) == set(chance) | {"all"} and all(0 <= v <= 1 for v in saved.values())


def test_true_captions_score_higher_than_shuffled(net_path, tmp_path):
    net = load_attribute_net(net_path)
    prompts = render_folder(tmp_path, 48, seed=5)
    (tmp_path / "prompts.txt").write_text("\n".join(prompts) + "\n")
    images, read_prompts = read_sample_folder(tmp_path)
    assert read_prompts == prompts and images.shape == (48, 3, 32, 32)
    true = attribute_accuracy(net, images, prompts)
    shuffled = attribute_accuracy(net, images, [prompts[i] for i in np.random.default_rng(0).permutation(48)])
    assert np.mean([true[k] for k in attribute_vocab()]) > np.mean([shuffled[k] for k in attribute_vocab()]) + 0.05
    assert true["all"] <= min(true[k] for k in attribute_vocab())


def test_load_round_trip_and_ensure_does_not_retrain(net_path):
    net = load_attribute_net(net_path)
    mtime = net_path.stat().st_mtime_ns
    again = ensure_attribute_net(net_path)
    assert net_path.stat().st_mtime_ns == mtime
    images = torch.randint(0, 256, (4, 3, 32, 32), dtype=torch.uint8)
    torch.testing.assert_close(net.features(images), again.features(images), rtol=0, atol=0)


def test_ensure_trains_a_missing_net_deterministically(tmp_path):
    kwargs = dict(num=64, steps=2, batch_size=8, num_heldout=8, widths=(8, 8, 8, 8))
    a = ensure_attribute_net(tmp_path / "a.safetensors", **kwargs)
    b = ensure_attribute_net(tmp_path / "b.safetensors", **kwargs)
    images = torch.randint(0, 256, (2, 3, 32, 32), dtype=torch.uint8)
    torch.testing.assert_close(a.features(images), b.features(images), rtol=0, atol=0)


def test_errors_name_the_problem(net_path, tmp_path):
    net = load_attribute_net(net_path)
    images = torch.zeros(1, 3, 32, 32, dtype=torch.uint8)
    with pytest.raises(ValueError, match="not an embedded-dataset caption"):
        attribute_accuracy(net, images, ["a photo of a cat"])
    with pytest.raises(ValueError, match="1 images but 2 prompts"):
        attribute_accuracy(net, images, ["x", "y"])
    with pytest.raises(FileNotFoundError, match="missing.safetensors"):
        load_attribute_net(tmp_path / "missing.safetensors")
