"""The app's ControlNet requests without the page: the control map each annotator makes, the controlled images of
the teacher and of the LCM student (the teacher's ControlNet on the student's base, under the student's process),
and every refusal (bad uploads included)."""

import re

import numpy as np
import pytest
import torch
from mmengine.config import Config

from diffusion.app.control import check_image, control_map, controlled, load_controlnets
from diffusion.app.core import InputError, load_models
from diffusion.build import build_model, load_pipeline, with_weights
from diffusion.data.embedded import edge_map, render
from tests.app.fixtures import (
    PROMPT,
    bad_uploads,
    make_tiny_app,
    make_tiny_controlnet,
    reference,
    reference_control_pipelines,
    reference_pipelines,
)

SHAPE = dict(shape="triangle", color="red", size="large", position="top left", background="white")


def dilate(mask: np.ndarray) -> np.ndarray:
    """``mask`` grown by 1 px (8-neighbourhood)."""
    out = mask.copy()
    for dy in (-1, 0, 1):
        for dx in (-1, 0, 1):
            out |= np.roll(mask, (dy, dx), axis=(0, 1))
    return out


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("app_control")
    app = make_tiny_app(root)
    app.update(make_tiny_controlnet(app, root))
    models = load_models(str(app["config"]), {"teacher": str(app["teacher"]), "lcm": str(app["lcm"])})
    control = load_controlnets(models, str(app["cn_config"]), str(app["controlnet"]))
    pipes = reference_pipelines(app)
    return dict(app, models=models, control=control, pipes=reference_control_pipelines(app, pipes))


@pytest.mark.parametrize("sampler, steps, cfg", [("lcm", 2, None), ("dpm", 2, 3.0)])
def test_controlled_image_is_the_controlnets_image(tiny, sampler, steps, cfg):
    _, edges = render(SHAPE)
    cmap, result = controlled(tiny["models"], tiny["control"], PROMPT, edges, "image", sampler, steps, cfg, 4)
    assert cmap.shape == (32, 32, 3) and np.array_equal(cmap[..., 0], edges)
    cond = torch.from_numpy(cmap).permute(2, 0, 1)[None]
    kw = dict(name=sampler, steps=steps, cfg_scale=cfg, control=cond)
    expected = reference(tiny["pipes"], [PROMPT], 4, **kw)[0]
    assert torch.equal(torch.from_numpy(result.images[0]), expected)
    assert result.label.startswith("ControlNet (Use as is")
    # the control reaches the image: another map gives another image
    _, other = controlled(tiny["models"], tiny["control"], PROMPT, edges[::-1].copy(), "image", sampler, steps, cfg, 4)
    assert not np.array_equal(other.images[0], result.images[0])


def test_canny_finds_the_shapes_outline():
    image, _ = render(SHAPE, size=64)
    edges = control_map(image, "canny", (64, 64))
    assert edges.shape == (64, 64, 3) and set(np.unique(edges)) == {0, 255}
    outline = edge_map((image != image[0, 0]).any(axis=2))
    found = edges[..., 0] > 0
    assert (dilate(found) & outline).sum() > 0.8 * outline.sum()  # the outline is found, within 1 px
    assert not (found & ~dilate(outline)).any()  # and nothing else


def test_images_of_the_wrong_kind_are_refused(tiny):
    with pytest.raises(InputError, match="Upload an image or draw a sketch first"):
        check_image(None)
    with pytest.raises(InputError, match="8-bit image, got an array float32"):
        check_image(np.zeros((32, 32, 3), np.float32))
    with pytest.raises(InputError, match="at least 8 px"):
        check_image(np.zeros((4, 32, 3), np.uint8))
    sketch = np.zeros((16, 16, 4), np.uint8)
    sketch[4:8, 4:8] = (255, 255, 255, 255)
    assert check_image(sketch).shape == (16, 16, 3) and check_image(sketch)[5, 5].tolist() == [255] * 3
    assert check_image(np.full((9, 9), 7, np.uint8)).shape == (9, 9, 3)
    black = np.zeros((32, 32, 3), np.uint8)
    for annotator in ("image", "canny"):
        with pytest.raises(InputError, match="The control map is empty"):
            controlled(tiny["models"], tiny["control"], PROMPT, black, annotator, "lcm", 4, None, 0)
    with pytest.raises(InputError, match="HED needs --hed"):
        control_map(black + 255, "hed", (32, 32))


def test_aspect_of_the_upload_picks_the_bucket(tiny):
    _, edges = render(SHAPE, size=64)
    wide = np.concatenate([edges, edges], axis=1)  # 64 x 128: h/w 0.5 -> the closest bucket the grid divides
    cmap, result = controlled(tiny["models"], tiny["control"], PROMPT, wide, "image", "lcm", 1, None, 0)
    assert cmap.shape[:2] == result.images[0].shape[:2] == (20, 48)


def test_trained_weights_sit_on_the_apps_bases_not_the_configs_base(tiny, tmp_path):
    config = tmp_path / "cn_elsewhere.py"
    config.write_text(
        f"_base_ = ['{tiny['cn_config']}']\nweights = dict(base='{tmp_path / 'not_here.safetensors'}')\n"
    )
    control = load_controlnets(tiny["models"], str(config), str(tiny["controlnet"]))
    _, edges = render(SHAPE)
    for sampler in ("lcm", "dpm"):
        args = (PROMPT, edges, "image", sampler, 1, 2.0, 5)
        _, got = controlled(tiny["models"], control, *args)
        _, want = controlled(tiny["models"], tiny["control"], *args)
        assert np.array_equal(got.images[0], want.images[0])


def test_control_map_crops_a_wide_upload_like_training(tmp_path):
    """An upload whose aspect is not the bucket's: resized to cover and centre-cropped like training's
    ``load_image`` (and ``tools/sample.py --control``), not stretched: the circle stays a circle."""
    import cv2
    from PIL import Image

    from diffusion.data.images import load_image

    wide = np.zeros((64, 128, 3), np.uint8)
    cv2.circle(wide, (64, 32), 21, (255, 255, 255), 2)
    cmap = control_map(wide, "image", (32, 32))
    Image.fromarray(wide).save(tmp_path / "wide.png")
    expected = ((load_image(tmp_path / "wide.png", (32, 32)) + 1) * 127.5).round().to(torch.uint8)
    assert np.array_equal(cmap, expected.permute(1, 2, 0).numpy())
    ys, xs = np.nonzero(cmap[..., 0] > 64)
    assert abs(int(np.ptp(ys)) - int(np.ptp(xs))) <= 1  # as tall as wide


def test_a_controlnet_file_without_trained_controlnet_weights_is_refused(tiny):
    """--controlnet given a plain PixArt file: the copies come from the base and every zero projection stays zero, so
    the tab would ignore the control; the app refuses to start, naming the file."""
    with pytest.raises(SystemExit, match=f"(?s){tiny['lcm'].name}.*no trained ControlNet"):
        load_controlnets(tiny["models"], str(tiny["cn_config"]), str(tiny["lcm"]))


def test_bad_uploads_are_refused_with_the_reason(tiny, tmp_path):
    """A file that is not an image, a truncated or corrupt one, or one over Pillow's pixel limit: InputError saying
    why (its message is what the page shows), never the decoder's own exception."""
    for path, message in bad_uploads(tmp_path).values():
        with pytest.raises(InputError, match=re.escape(message)):
            controlled(tiny["models"], tiny["control"], PROMPT, str(path), "canny", "lcm", 1, None, 0)


def test_the_pixel_limit_is_pillows_and_holds_below_its_error(tmp_path, monkeypatch):
    """Pillow raises only above twice MAX_IMAGE_PIXELS and merely warns between; the app refuses both, and follows
    the limit a deployment sets."""
    from PIL import Image

    from diffusion.app.control import read_upload

    one_bit = tmp_path / "wide.png"
    Image.new("1", (10_000, 9_000)).save(one_bit)  # 90 M pixels: over the default 89.5 M, under twice that
    with pytest.raises(InputError, match="more than 89,478,485 pixels"):
        read_upload(str(one_bit))
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100_000_000)
    assert read_upload(str(one_bit)).shape == (9_000, 10_000, 3)


def test_an_upload_is_read_as_displayed(tmp_path):
    """The path of an upload is decoded as ``tools/sample.py --control`` reads a file: an RGBA image's transparent
    pixels over white (not whatever colour they store), a grey one expanded to RGB."""
    from PIL import Image

    rgba = np.zeros((16, 16, 4), np.uint8)
    rgba[4:8, 4:8] = (10, 20, 30, 255)
    Image.fromarray(rgba).save(tmp_path / "rgba.png")
    image = check_image(str(tmp_path / "rgba.png"))
    assert image.shape == (16, 16, 3) and image[5, 5].tolist() == [10, 20, 30] and image[0, 0].tolist() == [255] * 3
    Image.fromarray(np.full((9, 12), 77, np.uint8)).save(tmp_path / "grey.png")
    assert check_image(tmp_path / "grey.png").tolist() == np.full((9, 12, 3), 77, np.uint8).tolist()


def test_canny_low_above_high_is_an_input_message(tiny):
    image, _ = render(SHAPE)
    with pytest.raises(InputError, match=r"Canny low threshold \(150\) must not be above the high threshold \(90\)"):
        controlled(tiny["models"], tiny["control"], PROMPT, image, "canny", "lcm", 1, None, 0, low=150, high=90)
    cmap, _ = controlled(tiny["models"], tiny["control"], PROMPT, image, "canny", "lcm", 1, None, 0, low=90, high=90)
    assert cmap.any()


def test_the_controlnet_on_the_student_samples_under_the_students_process(tmp_path):
    """The ControlNet config (trained on the teacher) carries the teacher's LCM settings; on the student it must
    sample with the student's (here another DDIM grid and timestep scaling), as the app's own student pipeline does."""
    app = make_tiny_app(tmp_path)
    config = tmp_path / "student.py"
    config.write_text(
        f"_base_ = ['{app['config']}']\n"
        "method = dict(type='LCMDistillation', num_ddim_steps=25, timestep_scaling=4.0)\n"
    )
    app.update(make_tiny_controlnet(app, tmp_path))
    models = load_models(str(config), {"teacher": str(app["teacher"]), "lcm": str(app["lcm"])})
    control = load_controlnets(models, str(app["cn_config"]), str(app["controlnet"]))
    assert control.lcm.process == models.lcm.process
    assert control.lcm.process.lcm.num_ddim_steps == 25 and control.lcm.process.lcm.timestep_scaling == 4.0
    assert control.teacher.process == models.teacher.process
    _, edges = render(SHAPE)
    _, result = controlled(models, control, PROMPT, edges, "image", "lcm", 2, None, 3)
    cond = torch.from_numpy(edges)[None, None].expand(1, 3, 32, 32)
    on_lcm = with_weights(app["cn_cfg"], base=str(app["lcm"]), controlnet=str(app["controlnet"]))
    model = build_model(on_lcm).eval()
    student = load_pipeline(Config.fromfile(str(config)), model=model, like=models.teacher)  # the student's config
    expected = reference({"lcm": student}, [PROMPT], 3, name="lcm", steps=2, control=cond)[0]
    assert torch.equal(torch.from_numpy(result.images[0]), expected)
