"""Web app: PixArt-delta's 1-8 step LCM generation (§3) next to its PixArt-alpha teacher, in the browser, offline.

    make app                                   # the embedded default at http://127.0.0.1:7860 (committed models)
    python tools/app.py --config configs/lcm/pixartms_xl2_img1024_lcm.py \
        --checkpoint teacher=output/pretrained_models/PixArt-XL-2-1024-MS.pth \
                     lcm=output/lcm1024/checkpoints/step_0005000 \
        --text-encoder output/pretrained_models/t5_ckpts/t5-v1_1-xxl --vae output/pretrained_models/sd-vae-ft-ema \
        --controlnet output/pretrained_models/PixArt-XL-2-1024-ControlNet.pth \
        --controlnet-config configs/controlnet/pixartms_xl2_img1024_controlnet.py \
        --device cuda --dtype fp16 --host 0.0.0.0 --port 7860

Tabs: *Text to image* (LCM student 1-8 steps, or the teacher's DPM-Solver++ with steps and CFG; seed, batch 1-4,
aspect-ratio bucket for PixArtMS; the measured time per image), *Teacher vs LCM* (one prompt and seed through the
teacher at N steps and the student at 4, side by side with their times) and *ControlNet* (§4: an uploaded image or a
drawn sketch -> Canny / HED / as-is control map -> the ControlNet on the teacher or on the LCM student).

Every network is built once at start through ``diffusion.build.load_pipeline``; requests are queued and run one at a
time (``--concurrency``). Bad input (an empty prompt, too many steps, ...) is reported in the page, never as a stack
trace. Nothing is fetched from the network: gradio analytics are off and the page uses no CDN assets.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Sequence

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # before gradio is imported: no telemetry or version ping
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

from diffusion.app.control import DEFAULT_CONTROLNET, DEFAULT_CONTROLNET_CONFIG  # noqa: E402
from diffusion.app.core import DEFAULT_CONFIG, load_models  # noqa: E402
from diffusion.paths import shown  # noqa: E402

KINDS = ("teacher", "lcm")


def parse_checkpoints(items: Sequence[str] | None) -> dict[str, str]:
    """``["teacher=PATH", "lcm=PATH"]`` -> ``{"teacher": PATH, "lcm": PATH}`` (SystemExit naming a bad item)."""
    found: dict[str, str] = {}
    for item in items or ():
        kind, sep, path = item.partition("=")
        if not sep or kind not in KINDS or not path:
            raise SystemExit(f"--checkpoint {item!r}: expected KIND=PATH with KIND one of {KINDS}")
        if kind in found:
            raise SystemExit(f"--checkpoint: {kind} given twice")
        found[kind] = path
    return found


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--config", default=None, help=f"LCM run config (default: the embedded {shown(DEFAULT_CONFIG)})"
    )
    parser.add_argument(
        "--checkpoint",
        nargs="+",
        metavar="KIND=PATH",
        help="teacher=PATH and/or lcm=PATH: .safetensors / .pth / diffusers or trainer step folder "
        "(teacher default: the config's weights.teacher; lcm default on the embedded config: assets/tiny_lcm)",
    )
    parser.add_argument(
        "--controlnet",
        default=None,
        help="ControlNet checkpoint (full official file or trained "
        f"weights; default on the embedded config: {shown(DEFAULT_CONTROLNET)} when present)",
    )
    parser.add_argument(
        "--controlnet-config",
        default=None,
        help="its config, with a controlnet section (default on the embedded config: "
        f"{shown(DEFAULT_CONTROLNET_CONFIG)})",
    )
    parser.add_argument("--hed", default=None, help="HED annotator weights (ControlNetHED.pth) for the ControlNet tab")
    parser.add_argument("--text-encoder", default=None, help="local T5 folder (overrides text_encoder.path)")
    parser.add_argument("--vae", default=None, help="local diffusers AutoencoderKL folder (overrides the codec)")
    parser.add_argument("--device", default=None, help="default: cuda when available, else cpu")
    parser.add_argument("--dtype", default="fp32", choices=("fp32", "bf16", "fp16"))
    parser.add_argument("--host", default="127.0.0.1", help="0.0.0.0 to serve other machines")
    parser.add_argument("--port", type=int, default=7860)
    parser.add_argument("--concurrency", type=int, default=1, help="requests run at once (the rest wait in a queue)")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    import torch

    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.concurrency < 1:
        raise SystemExit(f"--concurrency must be >= 1, got {args.concurrency}")
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    models = load_models(
        args.config,
        parse_checkpoints(args.checkpoint),
        text_encoder=args.text_encoder,
        vae=args.vae,
        device=device,
        dtype=args.dtype,
    )
    controlnet, cn_config = args.controlnet, args.controlnet_config
    if args.config is None:  # the embedded default: its committed ControlNet, once there is one
        cn_config = cn_config or DEFAULT_CONTROLNET_CONFIG
        if controlnet is None and DEFAULT_CONTROLNET.is_file():
            controlnet = DEFAULT_CONTROLNET
    if controlnet is not None:
        if cn_config is None:
            raise SystemExit("--controlnet needs --controlnet-config (a config with a controlnet section)")
        from diffusion.app.control import load_controlnets

        models.control = load_controlnets(models, cn_config, controlnet, args.hed, device, args.dtype)
    from diffusion.app.ui import serve  # gradio is imported once the models are loaded

    serve(models, args.host, args.port, args.concurrency)


if __name__ == "__main__":
    main()
