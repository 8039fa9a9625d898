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


def circle_image(height: int, width: int) -> np.ndarray:
    """A white circle outline (radius height/3) centred on black: round only if the geometry keeps the aspect."""
    image = np.zeros((height, width, 3), np.uint8)
    cv2.circle(image, (width // 2, height // 2), height // 3, (255, 255, 255), 2)
    return image


def as_uint8(images: torch.Tensor) -> torch.Tensor:
    """[-1, 1] -> 0..255 uint8, the inverse of load_image's scaling."""
    return ((images + 1) * 127.5).round().to(torch.uint8)


def test_load_control_crops_a_wide_image_like_training(tmp_path):
    """A 64 x 128 control image sampled at 32 x 32: resized to cover and centre-cropped exactly as training's
    ``load_image`` does (the circle stays a circle), not stretched into an ellipse."""
    from PIL import Image

    from diffusion.data.annotators import read_control_image
    from diffusion.data.images import load_image

    Image.fromarray(circle_image(64, 128)).save(tmp_path / "wide.png")
    control = read_control_image(tmp_path / "wide.png", 32, 32)
    assert control.shape == (1, 3, 32, 32) and control.dtype == torch.uint8
    assert torch.equal(control[0], as_uint8(load_image(tmp_path / "wide.png", (32, 32))))
    ys, xs = np.nonzero(control[0, 0].numpy() > 64)
    assert abs(int(np.ptp(ys)) - int(np.ptp(xs))) <= 1  # as tall as wide


def test_load_control_honours_exif_orientation(tmp_path):
    """An EXIF-rotated control image is used as displayed (portrait), like training's image loading."""
    from PIL import Image

    from diffusion.data.annotators import read_control_image
    from diffusion.data.images import load_image

    stored = np.zeros((32, 64, 3), np.uint8)
    stored[:, :16] = 255  # the stored left quarter; orientation 6 (rotate 270) shows it at the top
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.fromarray(stored).save(tmp_path / "rotated.png", exif=exif)
    control = read_control_image(tmp_path / "rotated.png", 64, 32)
    assert torch.equal(control[0], as_uint8(load_image(tmp_path / "rotated.png", (64, 32))))
    assert control[0, :, :16].min() == 255 and control[0, :, 16:].max() == 0


def test_load_control_names_a_truncated_file(tmp_path):
    from PIL import Image

    from diffusion.data.annotators import read_control_image

    Image.fromarray(circle_image(64, 64)).save(tmp_path / "whole.jpg", quality=95)
    data = (tmp_path / "whole.jpg").read_bytes()
    (tmp_path / "cut.jpg").write_bytes(data[: len(data) // 2])
    with pytest.raises(OSError, match="cut.jpg"):
        read_control_image(tmp_path / "cut.jpg", 32, 32)
