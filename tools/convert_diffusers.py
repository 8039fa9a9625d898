"""Convert PixArt transformer weights between the official format and diffusers' ``PixArtTransformer2DModel``.

    # official .pth / .safetensors -> diffusers folder (config.json + weights + y_embedding side file)
    python tools/convert_diffusers.py to-diffusers PixArt-XL-2-1024-MS.pth out/transformer --model PixArtMS_XL_2 \
        --cfg pe_interpolation=2.0 input_size=128
    # diffusers folder -> official-format safetensors (lossless when the y_embedding side file is present)
    python tools/convert_diffusers.py to-official out/transformer PixArt-XL-2-1024-MS.safetensors
"""

from __future__ import annotations

import argparse
import ast
import sys
from pathlib import Path

import torch
from safetensors.torch import save_file

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from diffusion.model.diffusers_format import load_diffusers, save_diffusers  # noqa: E402
from diffusion.model.io import load_state  # noqa: E402
from diffusion.registry import MODELS  # noqa: E402


def _parse_kv(items: list[str]) -> dict:
    out = {}
    for item in items:
        key, _, value = item.partition("=")
        try:
            out[key] = ast.literal_eval(value)
        except (ValueError, SyntaxError):
            out[key] = value
    return out


def to_diffusers(src: str, dst: str, model_type: str, model_kwargs: dict, key: str | None) -> Path:
    state = load_state(src, key)
    with torch.device("meta"):  # only the architecture is needed for the config; no allocation
        model = MODELS.build(dict(type=model_type, **model_kwargs))
    expected = {k for k in model.state_dict()}
    got = {k for k in state if k != "pos_embed"}
    if expected != got:
        raise KeyError(
            f"{src} does not match {model_type}: missing {sorted(expected - got)[:5]}, "
            f"unexpected {sorted(got - expected)[:5]}"
        )
    return save_diffusers(model, dst, state)


def to_official(src: str, dst: str) -> Path:
    _, state = load_diffusers(src)
    if "y_embedder.y_embedding" not in state:
        print(f"warning: {src} has no y_embedding side file; the learned null caption is not in the output")
    dst = Path(dst)
    dst.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in state.items()}, str(dst))
    return dst


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="direction", required=True)
    a = sub.add_parser("to-diffusers", help="official checkpoint -> diffusers transformer folder")
    a.add_argument("src")
    a.add_argument("dst")
    a.add_argument("--model", default="PixArtMS_XL_2", help="registered model type, e.g. PixArt_XL_2")
    a.add_argument("--cfg", nargs="*", default=[], help="model kwargs as key=value (input_size, pe_interpolation, ..)")
    a.add_argument("--key", default=None, help="state-dict key inside a .pth (default: 'state_dict' if present)")
    b = sub.add_parser("to-official", help="diffusers transformer folder -> official-format .safetensors")
    b.add_argument("src")
    b.add_argument("dst")
    args = parser.parse_args(argv)
    if args.direction == "to-diffusers":
        out = to_diffusers(args.src, args.dst, args.model, _parse_kv(args.cfg), args.key)
    else:
        out = to_official(args.src, args.dst)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
