"""The official T5-embedder caption cleaning (DeepFloyd IF / PixArt-α / diffusers ``_clean_caption``, applied twice).

EXPECTED was produced by diffusers 0.42.1 ``PixArtAlphaPipeline._text_preprocessing(clean_caption=True)`` with
ftfy 6.3.1 and beautifulsoup4 4.15 installed; when both are importable the test also compares against it live.
"""

import importlib.util

import pytest
import torch

from diffusion.data import TextEncoder
from diffusion.data.captions import clean_caption
from diffusion.data.embedded import VALIDATION_PROMPTS

EXPECTED = {
    "A photo of a CAT sitting on a Sofa, 4K!!! https://example.com/cat.jpg": (
        "a photo of a cat sitting on a sofa, 4k!!! ."
    ),
    "<p>Beautiful <b>sunset</b> over the sea &amp; mountains</p>": "beautiful sunset over the sea mountains",
    "Free shipping worldwide - buy now @shopname #12 #123456 page 3": "worldwide - buy now",
    "this-is-my-cute-cat_photo-from-home": "this is my cute cat photo from home",
    "café au lait — “quoted” ‘single’ «guillemets»": 'café au lait - "quoted" \'single\' "guillemets"',
    "cafÃ© mojibake and ﬁne ligatures and ＦＵＬＬＷＩＤＴＨ text": (
        "cafã mojibake and fine ligatures and fullwidth text"  # lower-cased before ftfy, as officially
    ),
    "Image 1920x1080 of product jc6640vc at 192.168.0.1 download free": "image of product at",
}
MORE = [
    "Poster: 日本語 テキスト mixed with english... and (brackets) [more] {curly} | pipes / slashes",
    "'Quoted whole caption'",
    "  leading and trailing spaces \\n with escaped newline  ",
    "New York City skyline at night, long exposure, ultra detailed, 8k, trending on artstation",
    "Close-up portrait of a woman with red hair; soft light: f/1.8, 85mm",
    "A+ grade steak & chips: delicious!",
    "",
]


@pytest.mark.parametrize("raw", sorted(EXPECTED))
def test_matches_the_official_cleaning(raw):
    assert clean_caption(raw) == EXPECTED[raw]


@pytest.mark.skipif(
    not (importlib.util.find_spec("bs4") and importlib.util.find_spec("ftfy")), reason="needs bs4 and ftfy"
)
def test_parity_with_diffusers_live():
    from diffusers.pipelines.pixart_alpha.pipeline_pixart_alpha import PixArtAlphaPipeline

    pipe = PixArtAlphaPipeline.__new__(PixArtAlphaPipeline)
    for raw in list(EXPECTED) + MORE:
        assert clean_caption(raw) == pipe._text_preprocessing(raw, clean_caption=True)[0], raw


def test_embedded_captions_are_unchanged_by_cleaning():
    """The embedded default (and the committed tiny teacher) keep their features: cleaning only lower-cases them."""
    for prompt in VALIDATION_PROMPTS:
        assert clean_caption(prompt) == prompt.lower()


def test_text_encoder_cleans_by_default_with_an_off_switch(tiny_text_encoder_dir):
    raw, cleaned = "A RED circle @bob", "a red circle"
    on = TextEncoder.from_pretrained(tiny_text_encoder_dir, max_length=8)
    off = TextEncoder.from_pretrained(tiny_text_encoder_dir, max_length=8, clean_caption=False)
    assert on.clean_caption and not off.clean_caption
    y_raw, mask_raw = on.encode([raw])
    y_clean, mask_clean = off.encode([cleaned])
    torch.testing.assert_close(y_raw, y_clean, rtol=0, atol=0)
    assert torch.equal(mask_raw, mask_clean)
    assert off.encode([raw])[1].sum() == len(raw.split()) + 1  # not cleaned: the URL stays a (unknown) token
