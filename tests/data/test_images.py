"""Images load as displayed: EXIF orientation, 16-bit, transparency on white, CMYK/gray/palette; sizes checked."""

import io

import numpy as np
import pytest
from PIL import Image

from diffusion.data.images import load_image, open_rgb, oriented_size


def _pixels(path):
    """The extraction path: load_image at the displayed size (no resize) back to 0..255 integers."""
    image = load_image(path, oriented_size(path))
    np.testing.assert_allclose((image.permute(1, 2, 0).numpy() + 1) * 127.5, np.asarray(open_rgb(path)), atol=1e-3)
    return np.round((image.permute(1, 2, 0).numpy() + 1) * 127.5).astype(int)


def _displayed():
    """A portrait picture (h 40, w 20) with a red top-left quarter and a blue bottom row, as a viewer shows it."""
    array = np.full((40, 20, 3), 128, np.uint8)
    array[:20, :10] = (255, 0, 0)
    array[-1] = (0, 0, 255)
    return array


@pytest.mark.parametrize("orientation, stored", [(6, Image.Transpose.ROTATE_90), (8, Image.Transpose.ROTATE_270)])
def test_exif_orientation_is_applied(tmp_path, orientation, stored):
    """A phone stores the sensor's landscape pixels plus an orientation tag; we must return the portrait picture."""
    raw = Image.fromarray(_displayed()).transpose(stored)  # what the camera wrote: 20 high, 40 wide
    exif = Image.Exif()
    exif[0x0112] = orientation
    raw.save(tmp_path / "phone.png", exif=exif.tobytes())
    assert Image.open(tmp_path / "phone.png").size == (40, 20)  # stored landscape (w, h)
    assert oriented_size(tmp_path / "phone.png") == (40, 20)  # displayed portrait (h, w)
    np.testing.assert_array_equal(_pixels(tmp_path / "phone.png"), _displayed())
    assert load_image(tmp_path / "phone.png", (40, 20)).shape == (3, 40, 20)


def test_16_bit_grayscale_keeps_its_tones(tmp_path):
    values = np.array([[0, 1000, 30000, 65535]], np.uint16).repeat(4, 0)
    Image.fromarray(values).save(tmp_path / "deep.png")  # Pillow writes a 16-bit grayscale PNG
    assert Image.open(tmp_path / "deep.png").mode.startswith("I")
    pixels = _pixels(tmp_path / "deep.png")
    np.testing.assert_array_equal(pixels[0, :, 0], np.round(values[0] / 257))  # 0, 4, 117, 255: not white
    assert (pixels == pixels[..., :1]).all()  # gray in all three channels


def test_transparency_is_composited_on_white(tmp_path):
    rgba = np.zeros((2, 2, 4), np.uint8)  # transparent black ...
    rgba[0, 0] = (255, 0, 0, 255)  # ... opaque red
    rgba[0, 1] = (0, 0, 255, 128)  # ... half-transparent blue
    Image.fromarray(rgba, "RGBA").save(tmp_path / "rgba.png")
    pixels = _pixels(tmp_path / "rgba.png")
    assert pixels[0, 0].tolist() == [255, 0, 0]
    assert pixels[1, 1].tolist() == [255, 255, 255]  # not the stored black
    np.testing.assert_allclose(pixels[0, 1], [127, 127, 255], atol=1)  # blue over white at alpha 128/255

    la = Image.fromarray(np.stack([np.full((2, 2), 0, np.uint8), np.array([[255, 0], [0, 0]], np.uint8)], -1), "LA")
    la.save(tmp_path / "la.png")
    assert _pixels(tmp_path / "la.png")[:, :, 0].tolist() == [[0, 255], [255, 255]]

    palette = Image.fromarray(np.array([[0, 1], [1, 1]], np.uint8), "P")
    palette.putpalette([0, 0, 0, 0, 255, 0] + [0] * 762)
    palette.save(tmp_path / "p.png", transparency=0)  # index 0 (black) is transparent
    assert _pixels(tmp_path / "p.png").tolist() == [[[255, 255, 255], [0, 255, 0]], [[0, 255, 0]] * 2]


def test_cmyk_grayscale_and_palette_become_rgb(tmp_path):
    Image.new("CMYK", (3, 2), (0, 0, 0, 0)).save(tmp_path / "cmyk.jpg", quality=100)
    assert Image.open(tmp_path / "cmyk.jpg").mode == "CMYK"
    np.testing.assert_allclose(_pixels(tmp_path / "cmyk.jpg"), 255, atol=2)  # no ink = white
    Image.new("CMYK", (3, 2), (0, 255, 255, 0)).save(tmp_path / "red.tif")  # magenta + yellow = red
    assert _pixels(tmp_path / "red.tif")[0, 0].tolist() == [255, 0, 0]
    Image.new("L", (3, 2), 77).save(tmp_path / "gray.png")
    assert (_pixels(tmp_path / "gray.png") == 77).all()
    Image.new("RGB", (3, 2), (10, 200, 30)).convert("P").save(tmp_path / "pal.gif")
    np.testing.assert_allclose(_pixels(tmp_path / "pal.gif"), np.broadcast_to([10, 200, 30], (2, 3, 3)), atol=40)


def test_truncated_file_raises(tmp_path):
    buffer = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), np.uint8)).save(buffer, "JPEG")
    (tmp_path / "cut.jpg").write_bytes(buffer.getvalue()[: len(buffer.getvalue()) // 2])
    with pytest.raises(OSError, match="truncated"):
        open_rgb(tmp_path / "cut.jpg")


def test_declared_size_must_match_the_oriented_image(tmp_path):
    Image.new("RGB", (40, 20)).save(tmp_path / "wide.png")  # h 20, w 40
    assert load_image(tmp_path / "wide.png", (8, 8), declared=(20, 40)).shape == (3, 8, 8)
    assert load_image(tmp_path / "wide.png", (8, 8), declared=(1000, 2010)).shape == (3, 8, 8)  # resized copy
    with pytest.raises(ValueError, match="declares height 1000, width 1500"):
        load_image(tmp_path / "wide.png", (8, 8), declared=(1000, 1500))  # another aspect ratio
    with pytest.raises(ValueError, match="declares height 40, width 20.*20x40"):
        load_image(tmp_path / "wide.png", (8, 8), declared=(40, 20))  # a swap would bucket it as portrait
