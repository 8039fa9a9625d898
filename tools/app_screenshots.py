"""Screenshots of the web app's tabs (``make app-screenshots``): the app is started on a free loopback port, driven
in headless Chromium (Debian's, through Playwright; nothing leaves the machine), one generation per tab, then one
screenshot per tab to ``--out``.

    python tools/app_screenshots.py [--out docs/images] [app flags, e.g. --config ... --checkpoint ...]

The app runs in the current folder (its flags' paths are relative to it; the embedded default, without flags, needs
the checkout: ``make app-screenshots`` runs there).
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from diffusion.app.browser import find_chromium, offline_env, screenshots, serve_app
from diffusion.paths import repo_path, shown

DEFAULT_OUT = repo_path("docs/images")


def main(argv: list[str] | None = None) -> list[Path]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default=DEFAULT_OUT, help=f"folder for app_<tab>.png (default {shown(DEFAULT_OUT)})")
    parser.add_argument("--scratch", default="output/app_browser", help="the app's log and the browser's files")
    args, app_args = parser.parse_known_args(argv)
    executable = find_chromium()
    if executable is None:
        raise SystemExit("no Chromium found: apt-get install -y --no-install-recommends chromium")
    scratch = Path(args.scratch).resolve()
    env = offline_env(scratch)
    os.environ.update(env)
    with serve_app(app_args, env, scratch / "app.log", cwd=Path.cwd()) as url:  # app paths: relative to here
        written = screenshots(url, Path(args.out).resolve(), executable)
    for path in written:
        print(f"wrote {path}")
    return written


if __name__ == "__main__":
    main()
