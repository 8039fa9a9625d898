"""Convert PixArt transformer weights between the official format and diffusers' ``PixArtTransformer2DModel``.

    # official .pth / .safetensors -> diffusers folder (config.json + weights + y_embedding side file)
    python tools/convert_diffusers.py to-diffusers PixArt-XL-2-1024-MS.pth out/transformer --model PixArtMS_XL_2 \
        --cfg pe_interpolation=2.0 input_size=128
    # PixArt-Sigma: the architecture from a config's model section (300 tokens, no micro-conditions, its pe)
    python tools/convert_diffusers.py to-diffusers PixArt-Sigma-XL-2-1024-MS.pth out/sigma_transformer \
        --config configs/pixart/pixart_sigma_xl2_img1024_ms.py
    # diffusers folder -> official-format safetensors (lossless when the y_embedding side file is present)
    python tools/convert_diffusers.py to-official out/transformer PixArt-XL-2-1024-MS.safetensors
    # a trained model -> complete PixArtAlphaPipeline / PixArtSigmaPipeline folder (transformer, scheduler on the
    # config's diffusion process, T5, tokenizer, VAE); an LCM-LoRA checkpoint is merged into its base, a w-embedding
    # student is exported at one guidance (--cfg-scale, w = cfg - 1); --pipeline defaults to PixArtSigmaPipeline for a
    # Σ model (300 tokens, no micro-conditions)
    python tools/convert_diffusers.py export-pipeline student.safetensors out/pixart-lcm --config CFG \
        --text-encoder T5_DIR --vae VAE_DIR --scheduler lcm
    python tools/convert_diffusers.py export-pipeline output/sigma_lcm/checkpoints/step_0005000 out/sigma-lcm \
        --config configs/lcm/pixart_sigma_xl2_img1024_lcm.py
    # an LCM-LoRA checkpoint -> a peft LoRA of diffusers' transformer (PeftModel.from_pretrained(transformer, DIR))
    python tools/convert_diffusers.py export-lora output/lcm_lora/checkpoints/step_0005000 out/pixart-lcm-lora \
        --config configs/lcm/pixartms_xl2_img1024_lcm_lora.py

A KV-compressed PixArt-Sigma checkpoint (``blocks.N.attn.sr`` / ``attn.norm``) is refused with the reason: diffusers'
``PixArtTransformer2DModel`` has no KV compression, so it cannot hold that model.
"""

from __future__ import annotations

import argparse
import ast
import json
from pathlib import Path

import torch
from safetensors.torch import save_file

from diffusion.build import load_model
from diffusion.export import LCM_SCHEDULES, PIPELINES, SCHEDULER_CHOICES, export_pipeline
from diffusion.model.diffusers_format import load_diffusers, official_to_diffusers, save_diffusers
from diffusion.model.io import check_fits, load_state, resolve_checkpoint
from diffusion.model.students import export_peft_lora, fold_guidance_embedding, has_lora, lora_scale
from diffusion.protocols import embeds_guidance
from diffusion.registry import MODELS
from diffusion.schedulers import DiffusionProcess


def _parse_kv(items: list[str]) -> dict:
    out = {}
    for item in items:
        key, _, value = item.partition("=")
        try:
            out[key] = ast.literal_eval(value)
        except (ValueError, SyntaxError):
            out[key] = value
    return out


def model_section(config: str | None, model_type: str | None, overrides: dict) -> tuple[str, dict]:
    """(model type, kwargs): ``config``'s ``model`` section (a PixArt-Sigma config gives 300 tokens, no
    micro-conditions and its pe_interpolation), else ``model_type`` (default PixArtMS_XL_2); ``overrides`` on top."""
    kwargs = {}
    if config is not None:
        from mmengine.config import Config

        kwargs = dict(Config.fromfile(config).model)
        model_type = model_type or kwargs.pop("type")
        kwargs.pop("type", None)
    return model_type or "PixArtMS_XL_2", {**kwargs, **overrides}


def to_diffusers(src: str, dst: str, model_type: str, model_kwargs: dict, key: str | None) -> Path:
    state = load_state(src, key)
    official_to_diffusers(state)  # a KV-compressed / qk-norm checkpoint: refused with why diffusers cannot hold it
    with torch.device("meta"):  # only the architecture is needed for the config; no allocation
        model = MODELS.build(dict(type=model_type, **model_kwargs))
    check_fits(model.state_dict(), state, src)
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


def export_from_config(args: argparse.Namespace) -> Path:
    """Load ``args.src`` through the one way in (``diffusion.build.load_model``: LoRA merged) and export a diffusers
    pipeline folder; the T5 and VAE directories default to the config's ``text_encoder.path`` and ``codec.path``."""
    from mmengine.config import Config

    cfg = Config.fromfile(args.config)
    text_encoder, vae, codec = _export_parts(cfg, args)
    model = load_model(cfg, args.src, use_ema=not args.no_ema)
    _check_vae_fits(model.in_channels, args.src, vae)
    if embeds_guidance(model):  # diffusers has no w-embedding: fold one w into the weights
        w = (args.cfg_scale if args.cfg_scale is not None else cfg.method.get("w", 4.5) + 1.0) - 1.0
        plain = MODELS.build(dict(cfg.model, guidance_embedding=False))
        plain.load_state_dict(fold_guidance_embedding(model, w))
        model = plain.eval()
        print(f"folded the w-embedding at w = {w:g} (cfg_scale {w + 1:g}); sample the export with guidance_scale 1")
    return export_pipeline(
        model,
        args.dst,
        text_encoder,
        vae,
        scheduler=args.scheduler,
        lcm_timesteps_schedule=args.lcm_schedule,
        max_length=cfg.get("text_encoder", {}).get("max_length"),
        scaling_factor=codec.get("scale_factor") if codec.get("type") == "AutoencoderKLCodec" else None,
        process=DiffusionProcess.from_config(cfg),
        pipeline=args.pipeline,
    )


def _export_parts(cfg, args: argparse.Namespace) -> tuple[str, str, dict]:
    """The T5 and VAE directories of the export (flags, else the config's) and the config's codec section."""
    text_encoder = args.text_encoder or cfg.get("text_encoder", {}).get("path")
    codec = dict(cfg.get("codec") or {})
    vae = args.vae or codec.get("path")
    missing = [] if text_encoder else ["pass --text-encoder (or set text_encoder.path in the config)"]
    if not vae and codec.get("type", "AutoencoderKLCodec") != "AutoencoderKLCodec":
        missing.append(
            f"the config's codec is the embedded {codec['type']}, not a diffusers AutoencoderKL, so it cannot be "
            "exported: pass --vae with a local AutoencoderKL folder whose latent_channels equal the model's "
            "in_channels"
        )
    elif not vae:
        missing.append("pass --vae (or set codec.path in the config)")
    if missing:
        raise ValueError(f"{args.config}: " + "; ".join(missing))
    return text_encoder, vae, codec


def _check_vae_fits(in_channels: int, src: str, vae: str) -> None:
    """A diffusers pipeline feeds the VAE's latents to the transformer: their channels must agree."""
    config = Path(vae) / "config.json"
    if not config.is_file():
        raise FileNotFoundError(f"{config} not found: {vae} is not a diffusers AutoencoderKL folder")
    latent_channels = json.loads(config.read_text()).get("latent_channels")
    if latent_channels != in_channels:
        raise ValueError(
            f"the transformer has in_channels {in_channels} ({src}) but the VAE has latent_channels "
            f"{latent_channels} ({vae}): diffusers could not run the exported pipeline; give a VAE of {in_channels} "
            "latent channels (the config's codec)"
        )


def export_lora(args: argparse.Namespace) -> Path:
    """An LCM-LoRA checkpoint (full or adapters-only) -> a peft LoRA folder of diffusers' transformer."""
    from mmengine.config import Config

    cfg = Config.fromfile(args.config)
    path = resolve_checkpoint(args.src, use_ema=not args.no_ema)
    state = load_state(path)
    if not has_lora(state):
        raise ValueError(
            f"{path} holds no LoRA adapters (a full student or a teacher?): export-lora needs an LCM-LoRA checkpoint; "
            "export a full model with export-pipeline"
        )
    rank, scale = lora_scale((cfg.get("method") or {}).get("lora"), str(path))
    return export_peft_lora(state, rank, rank * scale, args.dst)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="direction", required=True)
    a = sub.add_parser("to-diffusers", help="official checkpoint -> diffusers transformer folder")
    a.add_argument("src")
    a.add_argument("dst")
    a.add_argument("--config", default=None, help="take the architecture from this config's model section")
    a.add_argument("--model", default=None, help="registered model type (default: the config's, else PixArtMS_XL_2)")
    a.add_argument("--cfg", nargs="*", default=[], help="model kwargs as key=value (input_size, pe_interpolation, ..)")
    a.add_argument("--key", default=None, help="state-dict key inside a .pth (default: 'state_dict' if present)")
    b = sub.add_parser("to-official", help="diffusers transformer folder -> official-format .safetensors")
    b.add_argument("src")
    b.add_argument("dst")
    c = sub.add_parser("export-pipeline", help="checkpoint + config -> diffusers PixArtAlpha/SigmaPipeline folder")
    c.add_argument("src", help="checkpoint: .safetensors, .pth or a diffusers transformer folder")
    c.add_argument("dst")
    c.add_argument("--config", required=True, help="config whose `model` builds the network")
    c.add_argument("--text-encoder", default=None, help="local T5 directory (default: config text_encoder.path)")
    c.add_argument("--vae", default=None, help="local AutoencoderKL directory (default: config codec.path)")
    c.add_argument("--scheduler", default="lcm", choices=SCHEDULER_CHOICES)
    c.add_argument("--lcm-schedule", default="pixart", choices=LCM_SCHEDULES, help="timesteps listed for users")
    c.add_argument("--no-ema", action="store_true", help="trainer folder: model.safetensors, not the EMA")
    c.add_argument("--cfg-scale", type=float, default=None, help="w-embedding student: fold w = cfg - 1 (method.w)")
    c.add_argument("--pipeline", default=None, choices=PIPELINES, help="default: PixArtSigmaPipeline for a Σ model")
    d = sub.add_parser("export-lora", help="LCM-LoRA checkpoint + config -> peft LoRA of the diffusers transformer")
    d.add_argument("src", help="trainer step folder or weights file with peft LoRA keys")
    d.add_argument("dst")
    d.add_argument("--config", required=True, help="config whose method.lora gives rank and alpha")
    d.add_argument("--no-ema", action="store_true", help="trainer folder: model.safetensors, not the EMA")
    args = parser.parse_args(argv)
    if args.direction == "to-diffusers":
        out = to_diffusers(args.src, args.dst, *model_section(args.config, args.model, _parse_kv(args.cfg)), args.key)
    elif args.direction == "export-pipeline":
        out = export_from_config(args)
    elif args.direction == "export-lora":
        out = export_lora(args)
    else:
        out = to_official(args.src, args.dst)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
