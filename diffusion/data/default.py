"""One call that makes the embedded default ready to train on: tiny text encoder, images, feature caches.

The embedded default stands in for PixArt-δ's internal training data (paper §3) so ``make demo`` and the tests need
no downloads; it goes through exactly the file formats of real data (facts §6).
"""

import json
from pathlib import Path

from diffusion.data.codec import PixelCodec
from diffusion.data.embedded import make_embedded_data, max_prompt_words
from diffusion.data.features import extract_features
from diffusion.data.text_encoder import TextEncoder, ensure_tiny_text_encoder

EMBEDDED_MAX_LENGTH = max_prompt_words() + 1  # word-level tokenizer: one token per word plus EOS
DEFAULT_NUM = 4800  # five balanced rounds of the 960 attribute combinations


def ensure_embedded_default(
    root: str | Path = "output/embedded_data",
    num: int = DEFAULT_NUM,
    seed: int = 0,
    size: int = 32,
    text_encoder_path: str | Path = "output/tiny_text_encoder",
    max_length: int = EMBEDDED_MAX_LENGTH,
    downsample: int = 2,
    control: bool = True,
    progress: bool = False,
) -> Path:
    """Create whatever is missing of the embedded default under ``root`` and return ``root``.

    Idempotent and resumable: the images are written once (``embedded_meta.json`` records num/seed/size; asking for
    different ones in the same root is a ValueError), the features are extracted with skip-existing, and a stamp
    file makes later calls return at once.
    """
    root = Path(root)
    wanted = {"num": num, "seed": seed, "size": size}
    meta_path = root / "embedded_meta.json"
    if meta_path.is_file():
        found = json.loads(meta_path.read_text())
        if found != wanted:
            raise ValueError(f"{meta_path} records {found}, not {wanted}; delete {root} or choose another root")
    else:
        make_embedded_data(root, num=num, size=size, seed=seed)
        meta_path.write_text(json.dumps(wanted))
    stamp = {"resolution": size, "max_length": max_length, "text_encoder": str(text_encoder_path), "control": control}
    stamp_path = root / f"features_done_{size}.json"
    if stamp_path.is_file() and json.loads(stamp_path.read_text()) == stamp:
        return root
    text_encoder = TextEncoder.from_pretrained(ensure_tiny_text_encoder(text_encoder_path), max_length=max_length)
    report = extract_features(
        root,
        text_encoder,
        PixelCodec(downsample=downsample),
        size,
        control=control,
        text_batch_size=256,
        vae_batch_size=256,
        progress=progress,
    )
    if report.bad:
        raise RuntimeError(f"embedded default has unreadable images: {report.summary()}")
    stamp_path.write_text(json.dumps(stamp))
    return root
