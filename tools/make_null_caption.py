"""T5("") as a null caption file, for either of its two uses (docs/design.md, "Two null captions"):
``weights.null_caption``, PixArt-Sigma's null caption written into the model's ``y_embedding`` (the official Σ
loader's ``null_embed_diffusers_300token.pth``; ``--max-length 300``), or ``method.null_caption``, the LCM teacher's
unconditional branch only (the official LCM-LoRA script's ``pipe.encode_prompt("")`` saved as ``null_embed.pth``;
PixArt-delta's full LCM script uses the learned ``y_embedding`` instead).

T5 runs over all ``max_length`` tokens, as diffusers does, because the teacher uses the result under each caption's
own mask: positions past the empty prompt's EOS hold T5's outputs for padding, not zeros. Writes ``y`` (1, 1, L, C)
in fp32 as safetensors (``--with-mask`` adds ``y_mask`` (1, L), which the method then uses instead of the caption's).

    python tools/make_null_caption.py --text-encoder output/pretrained_models/t5_ckpts/t5-v1_1-xxl \\
        --out output/pretrained_models/null_caption.safetensors
    # PixArt-Sigma: T5("") at 300 tokens, the top-level null_caption of every Σ config (the model's y_embedding)
    python tools/make_null_caption.py --text-encoder output/pretrained_models/t5_ckpts/t5-v1_1-xxl --max-length 300 \\
        --out output/pretrained_models/null_caption_t5_300.safetensors
"""

import argparse
from pathlib import Path

import torch
from safetensors.torch import save_file

from diffusion.data.text_encoder import TextEncoder


def main(argv: list[str] | None = None) -> Path:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--text-encoder", required=True, help="local T5 folder (tokenizer + T5EncoderModel)")
    parser.add_argument("--max-length", type=int, default=120, help="the config's text_encoder.max_length")
    parser.add_argument("--out", required=True, help="the .safetensors file to write")
    parser.add_argument("--with-mask", action="store_true", help="also store the empty prompt's own mask")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args(argv)
    encoder = TextEncoder.from_pretrained(args.text_encoder, max_length=args.max_length, device=args.device)
    with torch.no_grad():
        y, mask = encoder.encode([""], full_length=True)
    tensors = {"y": y.float().cpu().contiguous()}
    if args.with_mask:
        tensors["y_mask"] = mask.cpu().contiguous()
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(out), metadata={"text_encoder": str(args.text_encoder), "prompt": ""})
    print(f"wrote {out}: y {tuple(y.shape)}" + (f", y_mask {tuple(mask.shape)}" if args.with_mask else ""))
    return out


if __name__ == "__main__":
    main()
