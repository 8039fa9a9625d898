"""A tiny app to test against: a multi-scale PixArt config in tmp (small PixArtMS on the pixel codec, the tiny T5)
with a random teacher and a random LCM student checkpoint, and reference pipelines over the same files."""

from pathlib import Path

import torch
from mmengine.config import Config
from safetensors.torch import save_file

from diffusion.build import build_model, load_pipeline, with_weights
from diffusion.data import ensure_tiny_text_encoder
from diffusion.registry import MODELS
from tests.model.helpers import randomize

CONFIGS = Path(__file__).resolve().parents[2] / "configs"
PROMPT = "a large red circle at the top left on a gray background"


def make_tiny_app(root: Path) -> dict:
    """Files under ``root`` and ``{config, cfg, teacher, lcm, argv}`` (``argv``: the app's flags for them)."""
    te_dir = ensure_tiny_text_encoder(root / "t5")
    config = root / "cfg.py"
    config.write_text(
        f"_base_ = ['{CONFIGS}/_base_/models/tiny.py', '{CONFIGS}/_base_/datasets/embedded_32.py']\n"
        "model = dict(type='PixArtMS_tiny', hidden_size=96, depth=2, num_heads=4)\n"
        f"text_encoder = dict(path='{te_dir}')\n"
    )
    cfg = Config.fromfile(str(config))
    paths = {}
    for seed, kind in enumerate(("teacher", "lcm")):
        model = randomize(MODELS.build(dict(cfg.model)), std=0.05, seed=seed)
        paths[kind] = root / f"{kind}.safetensors"
        save_file(model.state_dict(), str(paths[kind]))
    argv = ["--config", str(config), "--checkpoint", f"teacher={paths['teacher']}", f"lcm={paths['lcm']}"]
    return dict(config=config, cfg=cfg, argv=[*argv, "--threads", "1"], **paths)


def reference_pipelines(app: dict) -> dict:
    """The pipelines the app should reproduce, loaded the way it loads them."""
    teacher = load_pipeline(app["cfg"], app["teacher"])
    return dict(dpm=teacher, lcm=load_pipeline(app["cfg"], app["lcm"], like=teacher))


def reference(pipes: dict, prompts: list[str], seed: int, **sampler) -> list[torch.Tensor]:
    """What the app's one-thread server produces: images (H, W, 3) uint8 computed on one thread here too."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        images = pipes[sampler["name"]](prompts, seed=seed, **sampler)
    finally:
        torch.set_num_threads(threads)
    return list(images.permute(0, 2, 3, 1))


def make_tiny_controlnet(app: dict, root: Path) -> dict:
    """A ControlNet config over ``app``'s model (1 copy, base = the teacher file) and random trained weights
    (``controlnet.*`` only, as the trainer saves them; projections random too, so the control matters)."""
    config = root / "cn.py"
    config.write_text(
        f"_base_ = ['{app['config']}']\nweights = dict(base='{app['teacher']}')\n"
        "controlnet = dict(copy_blocks=1, topology='transformer')\n"
    )
    cfg = Config.fromfile(str(config))
    model = build_model(cfg)
    randomize(model.controlnet, std=0.05, seed=2)
    save_file(model.trainable_state_dict(), str(root / "controlnet.safetensors"))
    argv = ["--controlnet", str(root / "controlnet.safetensors"), "--controlnet-config", str(config)]
    return dict(cn_config=config, cn_cfg=cfg, controlnet=root / "controlnet.safetensors", cn_argv=argv)


def reference_control_pipelines(app: dict, pipes: dict) -> dict:
    """The ControlNet on the teacher and on the student, each built by ``build_model`` from its own base file plus
    the trained weights (independent of how the app swaps bases)."""
    out = {}
    for name, base in (("dpm", app["teacher"]), ("lcm", app["lcm"])):
        model = build_model(with_weights(app["cn_cfg"], base=str(base), controlnet=str(app["controlnet"]))).eval()
        out[name] = load_pipeline(app["cn_cfg"], model=model, like=pipes[name])
    return out


def png_header_only(width: int, height: int) -> bytes:
    """A PNG that declares ``width`` x ``height`` and holds no pixels: Pillow sizes it from the header alone."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)  # 8-bit RGB
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IEND", b"")


def bad_uploads(root: Path) -> dict[str, tuple[Path, str]]:
    """Files the ControlNet tab must refuse with its own message: name -> (file, part of the message). Each is named
    ``*.png``, as a person's file would be, so that neither the browser nor gradio tells them apart by name."""
    import numpy as np
    from PIL import Image

    root.mkdir(parents=True, exist_ok=True)
    noise = np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)  # incompressible: a long IDAT
    Image.fromarray(noise).save(root / "good.png")
    png = (root / "good.png").read_bytes()
    corrupt = bytearray(png)
    corrupt[200:400] = bytes(b ^ 0x5A for b in corrupt[200:400])  # inside the compressed pixel data
    files = {
        "not an image": (b"a shopping list, not a picture\n", "not an image this app can read"),
        "truncated": (png[: len(png) // 2], "cannot be decoded (truncated or corrupt?)"),
        "corrupt": (bytes(corrupt), "cannot be decoded (truncated or corrupt?)"),
        "over the pixel limit": (png_header_only(30000, 30000), "The image is too large"),
    }
    out = {}
    for name, (data, message) in files.items():
        path = root / f"{name.replace(' ', '_')}.png"
        path.write_bytes(data)
        out[name] = (path, message)
    return out
