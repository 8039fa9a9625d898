"""The embedded default generator: determinism, caption round trip, exact edge maps, balanced attributes."""

import json
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from mmengine.config import Config
from PIL import Image
from scipy.ndimage import binary_erosion

from diffusion.data import EMBEDDED_MAX_LENGTH, VALIDATION_PROMPTS, attribute_vocab, caption, parse_prompt, render
from diffusion.data.embedded import (
    BACKGROUNDS,
    COLORS,
    all_attribute_combinations,
    balanced_attributes,
    edge_map,
    make_embedded_data,
    max_prompt_words,
)
from tests.commands import load_command

FOUR_NEIGHBOURS = np.array([[0, 1, 0], [1, 1, 1], [0, 1, 0]], bool)

CONFIG_DIR = Path(__file__).resolve().parents[2] / "configs" / "_base_" / "datasets"


def _files(root):
    return {p.relative_to(root): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_generator_is_deterministic(tmp_path):
    make_embedded_data(tmp_path / "a", num=30, seed=3)
    make_embedded_data(tmp_path / "b", num=30, seed=3)
    make_embedded_data(tmp_path / "c", num=30, seed=4)
    a, b, c = _files(tmp_path / "a"), _files(tmp_path / "b"), _files(tmp_path / "c")
    assert len(a) == 2 * 30 + 1 and a == b
    assert a != c


def test_data_info_fields_and_round_trip(tmp_path):
    make_embedded_data(tmp_path, num=20, size=32, seed=0)
    entries = json.loads((tmp_path / "data_info.json").read_text())
    assert len(entries) == 20
    for entry in entries:
        assert {"path", "prompt", "height", "width", "ratio", "attributes", "control_path"} <= set(entry)
        assert parse_prompt(entry["prompt"]) == entry["attributes"]
        assert Image.open(tmp_path / entry["path"]).size == (32, 32)


def test_parse_prompt_inverts_caption_for_every_combination():
    combos = all_attribute_combinations()
    vocab = attribute_vocab()
    assert len(combos) == np.prod([len(v) for v in vocab.values()])
    for attributes in combos:
        assert parse_prompt(caption(attributes)) == attributes
    for prompt in VALIDATION_PROMPTS:
        parse_prompt(prompt)
    with pytest.raises(ValueError, match="unknown color"):
        parse_prompt("a large pink circle at the top left on a gray background")


def test_validation_prompts_cover_every_attribute_value():
    parsed = [parse_prompt(p) for p in VALIDATION_PROMPTS]
    assert len(VALIDATION_PROMPTS) == 8
    for key, values in attribute_vocab().items():
        assert {p[key] for p in parsed} == set(values)


def test_edges_are_exactly_the_shape_boundary(tmp_path):
    make_embedded_data(tmp_path, num=40, seed=1)
    for entry in json.loads((tmp_path / "data_info.json").read_text()):
        image = np.asarray(Image.open(tmp_path / entry["path"]))
        edges = np.asarray(Image.open(tmp_path / entry["control_path"]))
        attributes = entry["attributes"]
        shape = (image == COLORS[attributes["color"]]).all(-1)
        background = (image == BACKGROUNDS[attributes["background"]]).all(-1)
        assert (shape ^ background).all(), "every pixel is shape or background (no antialiasing)"
        assert shape.sum() >= 9
        boundary = shape & ~binary_erosion(shape, structure=FOUR_NEIGHBOURS, border_value=0)
        assert set(np.unique(edges)) <= {0, 255}
        np.testing.assert_array_equal(edges == 255, boundary)


def test_edge_map_of_a_square():
    mask = np.zeros((6, 6), bool)
    mask[1:5, 1:5] = True
    expected = mask.copy()
    expected[2:4, 2:4] = False
    np.testing.assert_array_equal(edge_map(mask), expected)


def test_render_attributes_are_visible():
    a = {"shape": "circle", "color": "red", "size": "large", "position": "top left", "background": "gray"}
    image, _ = render(a, 32)
    red = (image == COLORS["red"]).all(-1)
    rows, cols = np.nonzero(red)
    assert rows.mean() < 16 and cols.mean() < 16
    small, _ = render({**a, "size": "small"}, 32)
    assert (small == COLORS["red"]).all(-1).sum() < red.sum() / 2


def test_attributes_are_balanced():
    drawn = balanced_attributes(960 * 2 + 5, np.random.default_rng(0))
    counts = Counter(caption(a) for a in drawn)
    assert len(counts) == 960 and sorted(set(counts.values())) == [2, 3]


def test_config_max_length_fits_the_longest_caption():
    cfg = Config.fromfile(CONFIG_DIR / "embedded_32.py")
    assert EMBEDDED_MAX_LENGTH == max_prompt_words() + 1
    assert cfg.data.max_length == cfg.text_encoder.max_length == EMBEDDED_MAX_LENGTH


def test_cli_writes_the_dataset(tmp_path, capsys):
    main = load_command("tools/make_embedded_data.py").main

    main(["--out", str(tmp_path / "cli"), "--num", "5", "--size", "16", "--seed", "2"])
    make_embedded_data(tmp_path / "api", num=5, size=16, seed=2)
    assert _files(tmp_path / "cli") == _files(tmp_path / "api")
    assert "wrote 5 images" in capsys.readouterr().out
