"""The web app in a real browser: tools/app.py as a subprocess on a free loopback port, driven by Playwright in
Debian's Chromium (headless, nothing allowed off the machine). Each image the page shows is fetched as its PNG and
must equal, pixel for pixel, what the pipeline produces for the same prompt, seed, sampler and size. Also: bad input
(bad uploads included) gives the app's own message in the page and no traceback in the server log, and the API
answers gradio_client."""

import io
import os
import re

import numpy as np
import pytest
import torch
from PIL import Image

from diffusion.app.browser import find_chromium, launch_chromium, offline_env, offline_page, serve_app, set_number
from diffusion.data.embedded import render
from tests.app.fixtures import (
    PROMPT,
    bad_uploads,
    make_tiny_app,
    make_tiny_controlnet,
    reference,
    reference_control_pipelines,
    reference_pipelines,
)

CHROMIUM = find_chromium()
pytestmark = pytest.mark.skipif(
    CHROMIUM is None, reason="no Chromium (/usr/bin/chromium): apt-get install -y --no-install-recommends chromium"
)


@pytest.fixture(scope="module")
def app(tmp_path_factory):
    """The served tiny app (``url``), its reference pipelines, and an environment kept inside the test's tmp."""
    root = tmp_path_factory.mktemp("app")
    tiny = make_tiny_app(root)
    tiny.update(make_tiny_controlnet(tiny, root))
    env = offline_env(root / "env")
    with pytest.MonkeyPatch.context() as mp:
        for key, value in env.items():  # the browser and gradio_client run in this process
            mp.setenv(key, value)
        with serve_app([*tiny["argv"], *tiny["cn_argv"]], env, root / "app.log") as url:
            pipes = reference_pipelines(tiny)
            yield dict(tiny, url=url, root=root, pipes=pipes, control=reference_control_pipelines(tiny, pipes))


@pytest.fixture(scope="module")
def browser(app):
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        chromium = launch_chromium(playwright, CHROMIUM)
        yield chromium
        chromium.close()


@pytest.fixture()
def page(app, browser):
    """A fresh page on the app; after the test, no request may have left the loopback (no CDN, no analytics)."""
    blocked = []
    page = offline_page(browser, blocked)
    page.goto(app["url"])
    page.locator("#t2i-run").wait_for()
    yield page
    page.close()
    assert blocked == [], f"the page asked for off-machine resources: {blocked}"


def shown_images(page, selector: str, count: int) -> list[torch.Tensor]:
    """The PNGs behind the first ``count`` <img> under ``selector``, as (H, W, 3) uint8."""
    images = page.locator(f"{selector} img")
    images.nth(count - 1).wait_for()
    out = []
    for i in range(count):
        body = page.request.get(images.nth(i).get_attribute("src")).body()
        image = Image.open(io.BytesIO(body))
        assert image.format == "PNG"
        out.append(torch.from_numpy(np.array(image.convert("RGB"))))
    return out


def assert_same(shown: list[torch.Tensor], expected: list[torch.Tensor]) -> None:
    assert len(shown) == len(expected)
    for got, want in zip(shown, expected, strict=True):
        assert got.shape == want.shape
        assert torch.equal(got, want), f"{(got.int() - want.int()).abs().max()} max pixel difference"


def test_text_to_image_lcm_batch_is_the_pipelines_image(app, page, tmp_path):
    from playwright.sync_api import expect

    page.locator("#t2i-prompt textarea").fill(PROMPT)
    set_number(page, "t2i-steps", 3)
    set_number(page, "t2i-seed", 5)
    set_number(page, "t2i-batch", 2)
    page.locator("#t2i-run").click()
    expect(page.locator("#t2i-info")).to_contain_text("ms per image", timeout=60_000)
    expect(page.locator("#t2i-info")).to_contain_text("LCM student, 3 steps: 3 model evaluations per image; 2 images")
    expected = reference(app["pipes"], [PROMPT] * 2, seed=5, name="lcm", steps=3)
    assert_same(shown_images(page, "#t2i-gallery", 2), expected)
    page.screenshot(path=tmp_path / "t2i.png", full_page=True)


def test_text_to_image_teacher_with_cfg_and_aspect_bucket(app, page):
    from playwright.sync_api import expect

    page.locator("#t2i-prompt textarea").fill(PROMPT)
    page.locator("#t2i-sampler").get_by_label("Teacher: DPM-Solver++ + CFG").check()
    steps = page.locator("#t2i-steps input[type=number]")
    expect(steps).to_have_value("20")  # the teacher's default from SAMPLER_DEFAULTS, set by the page
    set_number(page, "t2i-steps", 3)
    set_number(page, "t2i-cfg", 3)
    page.locator("#t2i-size input").click()
    page.get_by_role("option", name="24×40 (h/w 0.6)").click()
    page.locator("#t2i-run").click()
    expect(page.locator("#t2i-info")).to_contain_text("CFG 3: 6 model evaluations per image", timeout=60_000)
    expected = reference(app["pipes"], [PROMPT], seed=0, name="dpm", steps=3, cfg_scale=3.0, height=24, width=40)
    assert_same(shown_images(page, "#t2i-gallery", 1), expected)


def test_teacher_vs_lcm_side_by_side(app, page, tmp_path):
    from playwright.sync_api import expect

    page.get_by_role("tab", name="Teacher vs LCM").click()
    page.locator("#cmp-prompt textarea").fill(PROMPT)
    set_number(page, "cmp-seed", 3)
    set_number(page, "cmp-steps", 2)
    set_number(page, "cmp-cfg", 2.5)
    page.locator("#cmp-run").click()
    # faster or slower, as measured (on a busy CPU a 2-step teacher can beat the 4-step student)
    speed = re.compile(r"\d+\.\d× (faster|slower) than the teacher|about as fast as the teacher")
    expect(page.locator("#cmp-lcm-info")).to_contain_text(speed, timeout=60_000)
    expect(page.locator("#cmp-teacher-info")).to_contain_text("2 steps, CFG 2.5: 4 model evaluations per image")
    teacher = reference(app["pipes"], [PROMPT], seed=3, name="dpm", steps=2, cfg_scale=2.5)
    assert_same(shown_images(page, "#cmp-teacher", 1), teacher)
    assert_same(shown_images(page, "#cmp-lcm", 1), reference(app["pipes"], [PROMPT], seed=3, name="lcm", steps=4))
    page.screenshot(path=tmp_path / "cmp.png", full_page=True)


def test_controlnet_tab_with_an_uploaded_edge_image(app, page, tmp_path):
    from playwright.sync_api import expect

    _, edges = render(dict(shape="circle", color="blue", size="large", position="top left", background="gray"))
    Image.fromarray(edges).save(tmp_path / "edges.png")
    page.get_by_role("tab", name="ControlNet").click()
    page.locator("#cn-prompt textarea").fill(PROMPT)
    page.locator("#cn-image input[type=file]").set_input_files(tmp_path / "edges.png")
    page.locator("#cn-image img").wait_for()
    page.locator("#cn-annotator").get_by_label("Use as is (already a control map)").check()
    set_number(page, "cn-steps", 2)
    set_number(page, "cn-seed", 9)
    page.locator("#cn-run").click()
    expect(page.locator("#cn-info")).to_contain_text("ControlNet (Use as is", timeout=60_000)
    expect(page.locator("#cn-info")).to_contain_text("LCM student, 2 steps: 2 model evaluations per image")
    control = torch.from_numpy(edges)[..., None].expand(32, 32, 3)
    assert_same(shown_images(page, "#cn-map", 1), [control])
    cond = control.permute(2, 0, 1)[None]
    assert_same(
        shown_images(page, "#cn-out", 1), reference(app["control"], [PROMPT], 9, name="lcm", steps=2, control=cond)
    )
    page.screenshot(path=tmp_path / "cn.png", full_page=True)


def test_controlnet_tab_with_a_drawn_sketch(app, page):
    from playwright.sync_api import expect

    page.get_by_role("tab", name="ControlNet").click()
    page.locator("#cn-prompt textarea").fill(PROMPT)
    page.get_by_text("… or draw a sketch").click()
    canvas = page.locator("#cn-sketch canvas").first
    canvas.wait_for()
    box = canvas.bounding_box()
    page.mouse.move(box["x"] + box["width"] * 0.3, box["y"] + box["height"] * 0.3)
    page.mouse.down()
    page.mouse.move(box["x"] + box["width"] * 0.7, box["y"] + box["height"] * 0.6, steps=10)
    page.mouse.up()
    page.locator("#cn-sampler").get_by_label("Teacher: DPM-Solver++ + CFG").check()
    expect(page.locator("#cn-steps input[type=number]")).to_have_value("20")
    set_number(page, "cn-steps", 2)
    page.locator("#cn-run").click()
    expect(page.locator("#cn-info")).to_contain_text("ControlNet (Canny edges), teacher", timeout=60_000)
    control = shown_images(page, "#cn-map", 1)[0]
    assert control.shape == (32, 32, 3) and 0 < (control > 0).float().mean() < 0.5  # the stroke's outline
    cond = control.permute(2, 0, 1)[None]
    expected = reference(app["control"], [PROMPT], 0, name="dpm", steps=2, cfg_scale=4.5, control=cond)
    assert_same(shown_images(page, "#cn-out", 1), expected)


def server_log_since(app, start: int) -> str:
    """What the app's server wrote to its log after byte ``start``."""
    with open(app["root"] / "app.log", "rb") as f:
        f.seek(start)
        return f.read().decode(errors="replace")


def log_size(app) -> int:
    return (app["root"] / "app.log").stat().st_size


def test_bad_input_shows_its_message(app, page):
    from playwright.sync_api import expect

    start = log_size(app)

    page.locator("#t2i-run").click()  # no prompt
    expect(page.get_by_test_id("toast-text").first).to_have_text("Enter a prompt.", timeout=30_000)
    page.get_by_test_id("toast-close").first.click()
    page.locator("#t2i-prompt textarea").fill(PROMPT)
    set_number(page, "t2i-steps", 20)  # LCM takes 1-8
    page.locator("#t2i-run").click()
    expect(page.get_by_test_id("toast-text").first).to_contain_text("from 1 to 8, got 20", timeout=30_000)
    assert page.locator("#t2i-gallery img").count() == 0
    page.get_by_test_id("toast-close").first.click()
    page.get_by_role("tab", name="ControlNet").click()
    page.locator("#cn-prompt textarea").fill(PROMPT)
    page.locator("#cn-run").click()  # no image uploaded, nothing drawn: the black canvas gives an empty control map
    expect(page.get_by_test_id("toast-text").first).to_contain_text("The control map is empty", timeout=30_000)
    assert "Traceback" not in page.content()
    assert "Traceback" not in server_log_since(app, start)  # a refused input is the person's, not the server's


@pytest.mark.parametrize("name", ["not an image", "truncated", "corrupt", "over the pixel limit"])
def test_a_bad_upload_gets_the_apps_message(app, page, tmp_path, name):
    """The uploaded file reaches the app undecoded: its own message in the page (not gradio's bare "Error"), and no
    traceback in the server log."""
    from playwright.sync_api import expect

    path, message = bad_uploads(tmp_path)[name]
    start = log_size(app)
    page.get_by_role("tab", name="ControlNet").click()
    page.locator("#cn-prompt textarea").fill(PROMPT)
    page.locator("#cn-image input[type=file]").set_input_files(path)
    page.locator("#cn-image img").wait_for(state="attached")  # uploaded (the browser cannot show it either)
    page.locator("#cn-run").click()
    expect(page.get_by_test_id("toast-text").first).to_contain_text(message, timeout=30_000)
    assert page.locator("#cn-out img").count() == 0
    assert "Traceback" not in server_log_since(app, start)


def test_canny_low_above_high_is_an_input_message(app, page, tmp_path):
    from playwright.sync_api import expect

    image, _ = render(dict(shape="circle", color="blue", size="large", position="top left", background="gray"))
    Image.fromarray(image).save(tmp_path / "shape.png")
    start = log_size(app)
    page.get_by_role("tab", name="ControlNet").click()
    page.locator("#cn-prompt textarea").fill(PROMPT)
    page.locator("#cn-image input[type=file]").set_input_files(tmp_path / "shape.png")
    page.locator("#cn-image img").wait_for()
    set_number(page, "cn-low", 150)
    set_number(page, "cn-high", 90)
    page.locator("#cn-run").click()
    toast = page.get_by_test_id("toast-text").first
    expect(toast).to_contain_text(
        "Canny low threshold (150) must not be above the high threshold (90)", timeout=30_000
    )
    assert "Generation failed" not in toast.inner_text()
    assert "Traceback" not in server_log_since(app, start)


def test_gradio_client_api(app, tmp_path):
    from gradio_client import Client, handle_file
    from gradio_client.exceptions import AppError

    client = Client(app["url"], download_files=str(tmp_path), verbose=False, analytics_enabled=False)
    size = "32×32 (h/w 1.0)"
    gallery, info = client.predict(PROMPT, "lcm", 2, 4.5, 7, 1, size, api_name="/text_to_image")
    assert "LCM student, 2 steps" in info
    assert len(gallery) == 1
    path = gallery[0]["image"]
    assert os.path.dirname(path).startswith(str(tmp_path)) and path.endswith(".png")
    shown = torch.from_numpy(np.array(Image.open(path).convert("RGB")))
    assert_same([shown], reference(app["pipes"], [PROMPT], seed=7, name="lcm", steps=2))
    with pytest.raises(AppError, match="Enter a prompt"):
        client.predict("  ", "lcm", 2, 4.5, 7, 1, size, api_name="/text_to_image")
    with pytest.raises(AppError, match="greater than maximum value 4"):  # gradio's own check of the slider range
        client.predict(PROMPT, "lcm", 2, 4.5, 7, 9, size, api_name="/text_to_image")
    _, edges = render(dict(shape="cross", color="red", size="large", position="center", background="black"))
    Image.fromarray(edges).save(tmp_path / "edges.png")
    control, image, info = client.predict(
        PROMPT, handle_file(tmp_path / "edges.png"), None, "image", 100, 200, "lcm", 1, 4.5, 2, api_name="/controlnet"
    )
    assert "ControlNet (Use as is" in info
    cond = torch.from_numpy(edges)[None, None].expand(1, 3, 32, 32)
    shown = torch.from_numpy(np.array(Image.open(image).convert("RGB")))
    assert_same([shown], reference(app["control"], [PROMPT], 2, name="lcm", steps=1, control=cond))
