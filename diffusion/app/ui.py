"""The web app's page (gradio Blocks): one tab per use, each a thin form over a function of ``diffusion/app/core.py``;
:func:`serve` builds it and serves it until interrupted.

Element ids (``t2i-*``, ``cmp-*``, ``cn-*``) are what the browser tests drive; api names (``/text_to_image``,
``/teacher_vs_lcm``, ``/controlnet``) are what ``gradio_client`` calls.
"""

from __future__ import annotations

import base64
import functools
import io
import traceback
from collections.abc import Callable

import gradio as gr
import numpy as np

from diffusion.app.core import (
    CFG_LIMITS,
    MAX_BATCH,
    MAX_SEED,
    STEP_LIMITS,
    InputError,
    Models,
    teacher_vs_lcm,
    text_to_image,
)
from diffusion.pipeline import SAMPLER_DEFAULTS

INTRO = """# PixArt-δ: 4-step generation with a consistency-distilled PixArt-α
The **LCM student** (PixArt-δ §3) samples in 1–8 steps without guidance; the **teacher** is PixArt-α with
DPM-Solver++ and classifier-free guidance. Loaded: {summary}."""


def page_css(models: Models) -> str | None:
    """Small images (the embedded default's 32 px) are enlarged without blur; large ones are left to the browser."""
    small = max(max(hw) for hw in models.sizes.values()) < 256
    fill = ".app-fill img { width: 100% !important; height: 100% !important; object-fit: contain; }"
    return f"img {{ image-rendering: pixelated; }} {fill}" if small else None


def page_errors(fn: Callable) -> Callable:
    """Refused input -> its message in the page and nothing in the server log (the person's mistake, not the
    server's); anything else -> a one-line message there and the traceback in the server log (the page never shows
    a stack trace)."""

    @functools.wraps(fn)
    def wrapped(*args):
        try:
            return fn(*args)
        except InputError as err:
            raise gr.Error(str(err), title="Check the input", print_exception=False) from None
        except Exception as err:  # noqa: BLE001 - reported to the person, traced in the log
            traceback.print_exc()
            raise gr.Error(f"Generation failed ({type(err).__name__}: {err}).", title="Error") from None

    return wrapped


def upload_path(payload) -> str | io.BytesIO | None:
    """An upload element's value as the uploaded file's path (a file object for an inline base64 image), undecoded."""
    if payload is None:
        return None
    if payload.path is None and payload.url and payload.url.startswith("data:"):
        return io.BytesIO(base64.b64decode(payload.url.split(",", 1)[1]))
    return payload.path


def undecoded(image: gr.Image) -> gr.Image:
    """``image`` handing its handler the uploaded file undecoded (:func:`upload_path`). gradio decodes an upload
    before the handler runs, so a file that is not an image, is truncated or corrupt, or is over Pillow's pixel limit
    would fail there with gradio's generic "Error" and the reason only in the server log; the app decodes it itself
    (``diffusion.app.control.read_upload``) and answers with its own message. (The element's ``preprocess`` is
    replaced on the instance: a subclass of a gradio component makes gradio write a ``.pyi`` stub next to this file.)
    """
    image.preprocess = upload_path
    return image


def speed_comparison(teacher_seconds: float, student_seconds: float) -> str:
    """How the student's time compares with the teacher's, in words that stay true either way."""
    if teacher_seconds <= 0 or student_seconds <= 0:
        return ""
    ratio = teacher_seconds / student_seconds
    if f"{ratio:.1f}" == "1.0":
        return "about as fast as the teacher"
    if ratio > 1:
        return f"{ratio:.1f}× faster than the teacher"
    return f"{1 / ratio:.1f}× slower than the teacher"


def on_sampler(name: str):
    """The chosen sampler's default steps; CFG only for the teacher."""
    return gr.update(value=SAMPLER_DEFAULTS[name]["steps"]), gr.update(visible=name != "lcm")


def text_to_image_tab(models: Models) -> None:
    first = "lcm" if models.lcm is not None else "dpm"
    with gr.Row():
        with gr.Column(scale=1):
            prompt = gr.Textbox(label="Prompt", lines=2, elem_id="t2i-prompt")
            sampler = gr.Radio(
                [(f"LCM student (1–{STEP_LIMITS['lcm'][1]} steps)", "lcm"), ("Teacher: DPM-Solver++ + CFG", "dpm")],
                value=first,
                label="Sampler",
                elem_id="t2i-sampler",
            )
            steps = gr.Slider(
                1, STEP_LIMITS["dpm"][1], SAMPLER_DEFAULTS[first]["steps"], step=1, label="Steps", elem_id="t2i-steps"
            )
            cfg = gr.Slider(
                *CFG_LIMITS,
                SAMPLER_DEFAULTS["dpm"]["cfg_scale"],
                step=0.5,
                label="Guidance scale (CFG)",
                visible=first == "dpm",
                elem_id="t2i-cfg",
            )
            with gr.Row():
                seed = gr.Number(0, precision=0, minimum=0, maximum=MAX_SEED, label="Seed", elem_id="t2i-seed")
                batch = gr.Slider(1, MAX_BATCH, 1, step=1, label="Batch", elem_id="t2i-batch")
            size = gr.Dropdown(
                list(models.sizes),
                value=next(iter(models.sizes)),
                label="Size (aspect-ratio bucket)",
                visible=models.multiscale,
                elem_id="t2i-size",
            )
            run = gr.Button("Generate", variant="primary", elem_id="t2i-run")
        with gr.Column(scale=2):
            gallery = gr.Gallery(
                label="Images",
                format="png",
                columns=MAX_BATCH,
                height=420,
                object_fit="contain",
                elem_id="t2i-gallery",
            )
            info = gr.Markdown(elem_id="t2i-info")

    sampler.change(on_sampler, sampler, [steps, cfg], api_name=False)

    @page_errors
    def generate(prompt, sampler, steps, cfg, seed, batch, size):
        result = text_to_image(models, prompt, sampler, steps, cfg, seed, batch, size)
        captions = [(image, f"{i + 1}/{len(result.images)}") for i, image in enumerate(result.images)]
        return captions, result.summary()

    inputs = [prompt, sampler, steps, cfg, seed, batch, size]
    run.click(generate, inputs, [gallery, info], api_name="text_to_image")
    prompt.submit(generate, inputs, [gallery, info], api_name=False)


def teacher_vs_lcm_tab(models: Models) -> None:
    if models.teacher is None or models.lcm is None:
        gr.Markdown("This tab needs both a teacher and an LCM student: `--checkpoint teacher=PATH lcm=PATH`.")
        return
    gr.Markdown("The same prompt and seed (the same starting noise) through both networks.")
    with gr.Row():
        prompt = gr.Textbox(label="Prompt", lines=2, scale=3, elem_id="cmp-prompt")
        seed = gr.Number(0, precision=0, minimum=0, maximum=MAX_SEED, label="Seed", scale=1, elem_id="cmp-seed")
    with gr.Row():
        steps = gr.Slider(
            1,
            STEP_LIMITS["dpm"][1],
            SAMPLER_DEFAULTS["dpm"]["steps"],
            step=1,
            label="Teacher steps",
            elem_id="cmp-steps",
        )
        cfg = gr.Slider(
            *CFG_LIMITS,
            SAMPLER_DEFAULTS["dpm"]["cfg_scale"],
            step=0.5,
            label="Teacher guidance (CFG)",
            elem_id="cmp-cfg",
        )
    run = gr.Button("Compare", variant="primary", elem_id="cmp-run")
    lcm_steps = SAMPLER_DEFAULTS["lcm"]["steps"]
    with gr.Row():
        with gr.Column():
            slow_image = gr.Image(
                label="Teacher: DPM-Solver++ + CFG",
                format="png",
                height=360,
                elem_id="cmp-teacher",
                elem_classes="app-fill",
            )
            slow_info = gr.Markdown(elem_id="cmp-teacher-info")
        with gr.Column():
            fast_image = gr.Image(
                label=f"LCM student, {lcm_steps} steps",
                format="png",
                height=360,
                elem_id="cmp-lcm",
                elem_classes="app-fill",
            )
            fast_info = gr.Markdown(elem_id="cmp-lcm-info")

    @page_errors
    def compare(prompt, seed, steps, cfg):
        slow, fast = teacher_vs_lcm(models, prompt, seed, steps, cfg)
        speed = speed_comparison(slow.seconds, fast.seconds)
        return slow.images[0], slow.summary(), fast.images[0], fast.summary() + (f"; {speed}" if speed else "")

    outputs = [slow_image, slow_info, fast_image, fast_info]
    run.click(compare, [prompt, seed, steps, cfg], outputs, api_name="teacher_vs_lcm")


def sketch_image(sketch) -> np.ndarray | None:
    """The Sketchpad's composite (strokes over its black canvas), or None when nothing was drawn on it."""
    if not sketch or sketch.get("composite") is None:
        return None
    return sketch["composite"]


def controlnet_tab(models: Models) -> None:
    control = models.control
    if control is None:
        gr.Markdown("This tab needs a ControlNet: start the app with `--controlnet PATH --controlnet-config CONFIG`.")
        return
    from diffusion.app.control import ANNOTATORS, CANNY_LIMITS, controlled

    first = "lcm" if control.lcm is not None else "dpm"
    with gr.Row():
        with gr.Column(scale=1):
            prompt = gr.Textbox(label="Prompt", lines=2, elem_id="cn-prompt")
            image = undecoded(
                gr.Image(
                    label="Upload an image (or a control map)",
                    type="filepath",
                    sources=["upload", "clipboard"],
                    height=260,
                    elem_id="cn-image",
                )
            )
            with gr.Accordion("… or draw a sketch (used when no image is uploaded)", open=False):
                canvas = np.zeros((256, 256, 3), dtype=np.uint8)
                sketch = gr.Sketchpad(
                    value={"background": canvas, "layers": [], "composite": canvas},
                    type="numpy",
                    format="png",
                    canvas_size=(256, 256),
                    image_mode="RGB",
                    brush=gr.Brush(colors=["#ffffff"], default_color="#ffffff", color_mode="fixed"),
                    elem_id="cn-sketch",
                )
            annotator = gr.Radio(
                [(ANNOTATORS[k], k) for k in control.annotators],
                value="canny",
                label="Annotator",
                elem_id="cn-annotator",
            )
            with gr.Row():
                low = gr.Slider(*CANNY_LIMITS, 100, step=1, label="Canny low threshold", elem_id="cn-low")
                high = gr.Slider(*CANNY_LIMITS, 200, step=1, label="Canny high threshold", elem_id="cn-high")
            sampler = gr.Radio(
                [("LCM student", "lcm"), ("Teacher: DPM-Solver++ + CFG", "dpm")],
                value=first,
                label="Sampler",
                elem_id="cn-sampler",
            )
            with gr.Row():
                steps = gr.Slider(
                    1,
                    STEP_LIMITS["dpm"][1],
                    SAMPLER_DEFAULTS[first]["steps"],
                    step=1,
                    label="Steps",
                    elem_id="cn-steps",
                )
                cfg = gr.Slider(
                    *CFG_LIMITS,
                    SAMPLER_DEFAULTS["dpm"]["cfg_scale"],
                    step=0.5,
                    label="Guidance (CFG)",
                    visible=first == "dpm",
                    elem_id="cn-cfg",
                )
            seed = gr.Number(0, precision=0, minimum=0, maximum=MAX_SEED, label="Seed", elem_id="cn-seed")
            run = gr.Button("Generate", variant="primary", elem_id="cn-run")
        with gr.Column(scale=2):
            with gr.Row():
                cmap = gr.Image(
                    label="Control map",
                    format="png",
                    height=360,
                    interactive=False,
                    elem_id="cn-map",
                    elem_classes="app-fill",
                )
                out = gr.Image(
                    label="Controlled image", format="png", height=360, elem_id="cn-out", elem_classes="app-fill"
                )
            info = gr.Markdown(elem_id="cn-info")

    sampler.change(on_sampler, sampler, [steps, cfg], api_name=False)

    @page_errors
    def generate(prompt, image, sketch, annotator, low, high, sampler, steps, cfg, seed):
        source = image if image is not None else sketch_image(sketch)
        control_image, result = controlled(
            models, control, prompt, source, annotator, sampler, steps, cfg, seed, low, high
        )
        return control_image, result.images[0], result.summary()

    inputs = [prompt, image, sketch, annotator, low, high, sampler, steps, cfg, seed]
    run.click(generate, inputs, [cmap, out, info], api_name="controlnet")


def build_demo(models: Models) -> gr.Blocks:
    """The page over ``models`` (queue and launch are the caller's)."""
    with gr.Blocks(title="PixArt-δ", analytics_enabled=False) as demo:
        gr.Markdown(INTRO.format(summary=models.summary()))
        with gr.Tab("Text to image", id="t2i"):
            text_to_image_tab(models)
        with gr.Tab("Teacher vs LCM", id="cmp"):
            teacher_vs_lcm_tab(models)
        with gr.Tab("ControlNet", id="cn"):
            controlnet_tab(models)
    return demo


def serve(models: Models, host: str, port: int, concurrency: int = 1) -> None:
    """Build the page and serve it until interrupted; ``concurrency`` requests run at once, the rest are queued."""
    demo = build_demo(models)
    demo.queue(default_concurrency_limit=concurrency, max_size=64)
    print(f"[app] {models.summary()}", flush=True)
    demo.launch(server_name=host, server_port=port, ssr_mode=False, show_error=False, css=page_css(models))
