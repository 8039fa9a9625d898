"""Drive the web app in a real browser: start ``tools/app.py`` on a free loopback port (in the checkout, where the
repo's configs name their files), open it in Debian's Chromium (headless, through Playwright's Python package; never
``playwright install``), refuse every request that leaves the machine. Used by the browser tests and by
``tools/app_screenshots.py`` (``make app-screenshots``), which writes one screenshot per tab (:func:`screenshots`).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator, Mapping
from pathlib import Path

from diffusion.paths import ROOT

CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-quic",
    "--no-first-run",
]
LOCAL = ("http://127.0.0.1", "data:", "blob:")
PROMPT = "a large red circle at the top left on a gray background"


def find_chromium() -> str | None:
    """Debian's Chromium (``apt-get install chromium``), else a ``chromium`` on PATH; None when there is none."""
    if os.access("/usr/bin/chromium", os.X_OK):
        return "/usr/bin/chromium"
    return shutil.which("chromium")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def offline_env(tmp: Path) -> dict[str, str]:
    """Environment that keeps the app and the browser on the loopback and their files inside ``tmp``."""
    dirs = {name: tmp / name.lower() for name in ("GRADIO_TEMP_DIR", "TMPDIR", "XDG_CACHE_HOME", "XDG_CONFIG_HOME")}
    dirs["XDG_DATA_HOME"] = tmp / "xdg_data_home"
    for path in dirs.values():
        path.mkdir(parents=True, exist_ok=True)
    env = {k: str(v) for k, v in dirs.items()}
    env.update(
        NO_PROXY="127.0.0.1,localhost",
        no_proxy="127.0.0.1,localhost",
        GRADIO_ANALYTICS_ENABLED="False",
        HF_HUB_OFFLINE="1",
        TRANSFORMERS_OFFLINE="1",
        MPLCONFIGDIR=str(tmp / "mpl"),
    )
    return env


@contextlib.contextmanager
def serve_app(
    app_args: list[str], env: Mapping[str, str], log: Path, timeout: float = 180.0, cwd: str | Path = ROOT
) -> Iterator[str]:
    """``tools/app.py app_args`` as a subprocess on a free port, run in ``cwd`` (the folder its relative paths are
    relative to); yields its URL once the page answers."""
    port = free_port()
    cmd = [sys.executable, str(ROOT / "tools/app.py"), *app_args, "--host", "127.0.0.1", "--port", str(port)]
    url = f"http://127.0.0.1:{port}/"
    with open(log, "w") as out:
        proc = subprocess.Popen(cmd, cwd=cwd, env={**os.environ, **env}, stdout=out, stderr=subprocess.STDOUT)
    try:
        deadline = time.time() + timeout
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"the app exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
            with contextlib.suppress(OSError):
                with urllib.request.urlopen(url, timeout=5) as response:
                    if response.status == 200:
                        break
            if time.time() > deadline:
                raise TimeoutError(
                    f"the app did not answer at {url} within {timeout:.0f} s:\n{log.read_text()[-3000:]}"
                )
            time.sleep(0.5)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def launch_chromium(playwright, executable: str):
    return playwright.chromium.launch(executable_path=executable, headless=True, args=CHROMIUM_ARGS)


def offline_page(browser, blocked: list[str]):
    """A page (1280 wide) whose requests off the loopback are aborted and appended to ``blocked``."""
    page = browser.new_page(viewport={"width": 1280, "height": 900})

    def route(request_route) -> None:
        url = request_route.request.url
        if url.startswith(LOCAL):
            request_route.continue_()
        else:
            blocked.append(url)
            request_route.abort()

    page.route("**/*", route)
    return page


def set_number(page, elem_id: str, value) -> None:
    """Type ``value`` into a gradio Slider's / Number's number box and commit it."""
    box = page.locator(f"#{elem_id} input[type=number]")
    box.fill(str(value))
    box.press("Enter")


def controlnet_screenshot(page, out: Path, prompt: str) -> Path:
    """An embedded-default picture through Canny and the 4-step LCM ControlNet."""
    from PIL import Image

    from diffusion.data.embedded import render

    image, _ = render(dict(shape="triangle", color="blue", size="large", position="center", background="white"), 256)
    with tempfile.TemporaryDirectory() as tmp:  # gradio refuses dotfiles: an ordinary name in a temp dir
        source = Path(tmp) / "triangle.png"
        Image.fromarray(image).save(source)
        page.locator("#cn-prompt textarea").fill("a large green triangle in the center on a black background")
        page.locator("#cn-image input[type=file]").set_input_files(source)
        page.locator("#cn-image img").wait_for()
        page.locator("#cn-run").click()
        page.locator("#cn-out img").wait_for()
    path = out / "app_cn.png"
    page.screenshot(path=path, full_page=True)
    return path


def screenshots(url: str, out: Path, executable: str, prompt: str = PROMPT) -> list[Path]:
    """One generation per tab, then a screenshot of it: ``out/app_<tab id>.png``."""
    from playwright.sync_api import sync_playwright

    out.mkdir(parents=True, exist_ok=True)
    blocked: list[str] = []
    written = []
    with sync_playwright() as playwright:
        browser = launch_chromium(playwright, executable)
        page = offline_page(browser, blocked)
        page.goto(url)
        page.locator("#t2i-prompt textarea").fill(prompt)
        set_number(page, "t2i-batch", 4)
        page.locator("#t2i-run").click()
        page.locator("#t2i-gallery img").nth(3).wait_for()
        written.append(out / "app_t2i.png")
        page.screenshot(path=written[-1], full_page=True)
        page.get_by_role("tab", name="Teacher vs LCM").click()
        page.locator("#cmp-prompt textarea").fill(prompt)
        page.locator("#cmp-run").click()
        page.locator("#cmp-lcm img").wait_for()
        written.append(out / "app_cmp.png")
        page.screenshot(path=written[-1], full_page=True)
        page.get_by_role("tab", name="ControlNet").click()
        if page.locator("#cn-run").count():  # the app was given a ControlNet
            written.append(controlnet_screenshot(page, out, prompt))
        browser.close()
    if blocked:
        raise RuntimeError(f"the page asked for off-machine resources: {blocked}")
    return written
