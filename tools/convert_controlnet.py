"""Export a ControlNet (PixArt-delta §4) as one official-layout ``.pth``: ``{"state_dict": {base_model.*,
controlnet.{i}.copied_block.*, controlnet.0.before_proj.*, controlnet.{i}.after_proj.*}}``, the format of the released
``PixArt-XL-2-{512,1024}-ControlNet.pth`` (loadable by the official code and by ``load_model``, no ``weights.base``).

A training checkpoint holds only the trainable weights; the frozen base comes from the config's ``weights.base``.

    python tools/convert_controlnet.py --config configs/controlnet/tiny_controlnet.py \
        --checkpoint assets/tiny_controlnet/model.safetensors --out output/tiny-ControlNet.pth
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
from mmengine.config import Config

from diffusion.build import load_model


def export(cfg, checkpoint: str | Path, out: str | Path, dtype: torch.dtype = torch.float32) -> Path:
    """Write the full official-layout state dict of the ControlNet ``checkpoint`` of ``cfg`` to ``out``."""
    if cfg.get("controlnet") is None:
        raise ValueError("the config has no controlnet section: not a ControlNet config")
    model = load_model(cfg, checkpoint)
    state = {k: v.to(dtype) if v.is_floating_point() else v for k, v in model.state_dict().items()}
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"state_dict": state}, out)
    return out


def main(argv: list[str] | None = None) -> Path:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", required=True)
    parser.add_argument("--checkpoint", required=True, help="trainer step folder / trainable weights / full file")
    parser.add_argument("--out", required=True)
    parser.add_argument("--fp16", action="store_true", help="store fp16 (the released files are fp32)")
    args = parser.parse_args(argv)
    out = export(
        Config.fromfile(args.config), args.checkpoint, args.out, torch.float16 if args.fp16 else torch.float32
    )
    print(f"wrote {out} ({out.stat().st_size / 1e6:.1f} MB)")
    return out


if __name__ == "__main__":
    main()
