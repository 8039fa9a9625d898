"""Shared tiny fixtures for the data tests: a tiny text encoder and a small embedded dataset with its caches."""

import pytest

from diffusion.data import EMBEDDED_MAX_LENGTH, ensure_embedded_default, make_tiny_text_encoder

NUM_IMAGES = 24


@pytest.fixture(scope="session")
def tiny_text_encoder_dir(tmp_path_factory):
    return make_tiny_text_encoder(tmp_path_factory.mktemp("tiny_t5") / "t5")


@pytest.fixture(scope="session")
def embedded_root(tmp_path_factory, tiny_text_encoder_dir):
    """Embedded default (24 images, control caches included); tests that modify it must copy it first."""
    root = tmp_path_factory.mktemp("embedded") / "data"
    return ensure_embedded_default(root, num=NUM_IMAGES, text_encoder_path=tiny_text_encoder_dir)


@pytest.fixture()
def max_length():
    return EMBEDDED_MAX_LENGTH
