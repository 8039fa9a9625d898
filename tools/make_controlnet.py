"""Train the embedded default's ControlNet-Transformer on the committed tiny teacher and publish it as
``assets/tiny_controlnet/`` (``make controlnet``, PixArt-delta §4).

The published file holds the trainable weights only (``controlnet.*``: the copies and zero linears, fp16, a few MB);
the frozen base is the config's ``weights.base`` (``assets/tiny_teacher``), exactly as a training checkpoint, so
``load_model(cfg, "assets/tiny_controlnet/model.safetensors")`` rebuilds the full ControlNet. ``meta.json`` records
the config hash (a test checks it against ``configs/controlnet/tiny_controlnet.py``), the teacher's hash, the wall time
and the measured throughput.

    python tools/make_controlnet.py [--config configs/controlnet/tiny_controlnet.py] [--work-dir DIR] [--out DIR]
"""

import argparse

from diffusion.experiments.assets import CONTROLNET_CONFIG, CONTROLNET_DIR, make_controlnet
from diffusion.paths import shown


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default=CONTROLNET_CONFIG, help=f"default {shown(CONTROLNET_CONFIG)}")
    parser.add_argument("--work-dir", default="output/tiny_controlnet_run")
    parser.add_argument("--out", default=CONTROLNET_DIR, help=f"default {shown(CONTROLNET_DIR)}")
    args = parser.parse_args(argv)
    make_controlnet(args.config, args.work_dir, args.out)


if __name__ == "__main__":
    main()
