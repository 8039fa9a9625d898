"""Control annotators (diffusion/data/annotators.py): HED loads the official ControlNetHED names (fp16 too) and
post-processes as the official detector (checked against OpenCV's resize); Canny and the pass-through map."""

import cv2
import numpy as np
import pytest
import torch

from diffusion.data.annotators import (
    CannyAnnotator,
    ControlNetHED,
    HEDAnnotator,
    ImageAnnotator,
    build_annotator,
    to_control_image,
)
from tests.data.helpers import OFFICIAL_HED, write_random_hed


@pytest.fixture(scope="module")
def hed_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("hed") / "ControlNetHED.pth"
    return path, write_random_hed(path)


def test_hed_parameter_names_are_official():
    assert {k: tuple(v.shape) for k, v in ControlNetHED().state_dict().items()} == OFFICIAL_HED


def test_hed_loads_fp16_and_matches_official_post_processing(hed_file):
    path, state = hed_file
    hed = HEDAnnotator(path)
    images = torch.rand(2, 3, 20, 28, generator=torch.Generator().manual_seed(1))
    out = hed(images)
    assert out.shape == (2, 1, 20, 28) and out.dtype == torch.float32 and 0 <= out.min() and out.max() <= 1
    # the official detector: side outputs of (x * 255 - norm), each cv2.resize(INTER_LINEAR) to H x W, mean, sigmoid
    net = ControlNetHED()
    net.load_state_dict({k: v.float() for k, v in state.items()})
    with torch.no_grad():
        sides = net(images * 255.0)
    for b in range(2):
        maps = [cv2.resize(s[b, 0].numpy(), (28, 20), interpolation=cv2.INTER_LINEAR) for s in sides]
        expected = 1 / (1 + np.exp(-np.mean(np.stack(maps, 2), axis=2)))
        np.testing.assert_allclose(out[b, 0].numpy(), expected, atol=1e-5)


def test_hed_missing_or_wrong_file_is_a_clear_error(tmp_path, hed_file):
    with pytest.raises(FileNotFoundError, match="ControlNetHED.pth"):
        HEDAnnotator(tmp_path / "nowhere.pth")
    _, state = hed_file
    torch.save({k: v for k, v in state.items() if k != "block3.projection.bias"}, tmp_path / "partial.pth")
    with pytest.raises(KeyError, match="block3.projection.bias"):
        HEDAnnotator(tmp_path / "partial.pth")


def test_canny_shape_range_and_opencv_parity():
    image = np.zeros((24, 32, 3), np.uint8)
    image[6:18, 8:20] = (200, 30, 30)
    edges = CannyAnnotator()(torch.from_numpy(image).permute(2, 0, 1)[None].float() / 255)
    assert edges.shape == (1, 1, 24, 32) and set(edges.unique().tolist()) <= {0.0, 1.0} and edges.sum() > 0
    expected = cv2.Canny(cv2.cvtColor(image, cv2.COLOR_RGB2GRAY), 100, 200) / 255.0
    np.testing.assert_array_equal(edges[0, 0].numpy(), expected)
    assert CannyAnnotator()(torch.full((2, 3, 16, 16), 0.5)).max() == 0  # a flat image has no edges


def test_image_annotator_and_control_image():
    maps = ImageAnnotator()(torch.rand(2, 3, 8, 8))
    assert maps.shape == (2, 1, 8, 8)
    rgb = to_control_image(maps)
    assert rgb.shape == (2, 3, 8, 8) and rgb.dtype == torch.uint8 and torch.equal(rgb[:, 0], rgb[:, 2])
    assert isinstance(build_annotator("canny"), CannyAnnotator)
    canny = build_annotator("canny", canny_low=20, canny_high=90, l2_gradient=True)
    assert (canny.low, canny.high, canny.l2_gradient) == (20, 90, True)
    with pytest.raises(ValueError, match="unknown annotator"):
        build_annotator("depth")
