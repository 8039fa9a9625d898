"""The web app (``make app``, ``tools/app.py``): PixArt-δ's few-step LCM student next to its teacher, and the
ControlNet, in the browser, offline.

``core`` loads the models once and answers requests without the page (:class:`~diffusion.app.core.InputError` for a
refused one), ``control`` is the ControlNet tab's side of it, ``ui`` the gradio page and
:func:`~diffusion.app.ui.serve`, ``browser`` the headless-Chromium harness of the browser tests and
``tools/app_screenshots.py``.
"""
