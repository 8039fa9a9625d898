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

OFFICIAL_HED = {"norm": (1, 3, 1, 1)}
for k, (cin, cout, n) in enumerate([(3, 64, 2), (64, 128, 2), (128, 256, 3), (256, 512, 3), (512, 512, 3)], 1):
    for i in range(n):
        OFFICIAL_HED[f"block{k}.convs.{i}.weight"] = (cout, cin if i == 0 else cout, 3, 3)
        OFFICIAL_HED[f"block{k}.convs.{i}.bias"] = (cout,)
    OFFICIAL_HED[f"block{k}.projection.weight"] = (1, cout, 1, 1)
    OFFICIAL_HED[f"block{k}.projection.bias"] = (1,)


@pytest.fixture(scope="module")
def hed_file(tmp_path_factory):
    g = torch.Generator().manual_seed(0)
    state = {k: (torch.randn(s, generator=g) * 0.05).half() for k, s in OFFICIAL_HED.items()}  # fp16, as released
    state["norm"] = torch.tensor([123.0, 117.0, 104.0]).view(1, 3, 1, 1).half()
    path = tmp_path_factory.mktemp("hed") / "ControlNetHED.pth"
    torch.save(state, path)
    return path, state


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
    with pytest.raises(ValueError, match="unknown annotator"):
        build_annotator("depth")
