"""The caption cleaning of the official T5 embedder (DeepFloyd IF's ``clean_caption``, used by PixArt-α's
``T5Embedder`` and diffusers' ``PixArtAlphaPipeline(clean_caption=True)``; facts §2, §6).

The released PixArt-α teacher was trained on captions cleaned this way (lower-cased, URLs, HTML, @handles, CJK,
product ids, "free shipping" and similar noise removed), and the cleaning is applied twice. Features extracted
without it condition the teacher on text it never saw, so it is the default (``TextEncoder(clean_caption=True)``).

The official code needs ``bs4`` (HTML → text) and ``ftfy`` (repair mojibake and odd Unicode). We implement both
steps with the standard library: ``html.parser`` for the HTML text, and :func:`fix_text` for the subset of
``ftfy.fix_text``'s default fixes that matters for captions (UTF-8 read as Latin-1/cp1252, ligatures, full-width
forms, curly quotes, line breaks, control characters, NFC). On ordinary captions the result equals diffusers'
``_clean_caption`` (tests/data/test_captions.py compares them when bs4 and ftfy are installed).
"""

import html
import re
import unicodedata
import urllib.parse as ul
from html.parser import HTMLParser

_BAD_PUNCT = re.compile(r"[" + "#®•©™&@·º½¾¿¡§~" + r"\)\(\]\[\}\{\|" + "\\" + r"\/\*" + r"]{1,}")
_DASHES = (
    r"[\u002D\u058A\u05BE\u1400\u1806\u2010-\u2015\u2E17\u2E1A\u2E3A\u2E3B\u2E40\u301C\u3030\u30A0\uFE31\uFE32"
    r"\uFE58\uFE63\uFF0D]+"
)
_URL_PATTERNS = (
    r"\b((?:https?:(?:\/{1,3}|[a-zA-Z0-9%])|[a-zA-Z0-9.\-]+[.](?:com|co|ru|net|org|edu|gov|it)[\w/-]*\b\/?(?!@)))",
    r"\b((?:www:(?:\/{1,3}|[a-zA-Z0-9%])|[a-zA-Z0-9.\-]+[.](?:com|co|ru|net|org|edu|gov|it)[\w/-]*\b\/?(?!@)))",
)
_CJK_RANGES = ("\u31c0-\u31ef", "\u31f0-\u31ff", "\u3200-\u32ff", "\u3300-\u33ff", "\u3400-\u4dbf")
_CJK_RANGES += ("\u4dc0-\u4dff", "\u4e00-\u9fff")
_LIGATURES = {"ﬀ": "ff", "ﬁ": "fi", "ﬂ": "fl", "ﬃ": "ffi", "ﬄ": "ffl", "ﬅ": "st", "ﬆ": "st", "Ĳ": "IJ", "ĳ": "ij"}
_MOJIBAKE_MARKS = re.compile("[ÂÃâ][\u0080-\u00bf\u0152\u0153\u0160\u0161\u0178\u017d\u017e\u2013-\u203a\u20ac]")
_CONTROL = re.compile("[\u0000-\u0008\u000b\u000e-\u001f\u007f\u200b\ufeff\ufffe]")
_TERMINAL_ESCAPES = re.compile("\x1b\\[[0-9;]*[A-Za-z]")


class _TextOnly(HTMLParser):
    """What ``BeautifulSoup(text, "html.parser").text`` returns: the character data, entities decoded."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.parts: list[str] = []

    def handle_data(self, data: str) -> None:
        self.parts.append(data)


def html_text(text: str) -> str:
    parser = _TextOnly()
    parser.feed(text)
    parser.close()
    return "".join(parser.parts)


def _fix_mojibake(text: str) -> str:
    """UTF-8 bytes that were decoded as cp1252/Latin-1 ("cafÃ©" → "café"), when the round trip is exact."""
    if not _MOJIBAKE_MARKS.search(text):
        return text
    for codec in ("cp1252", "latin-1"):
        try:
            return text.encode(codec).decode("utf-8")
        except UnicodeError:
            continue
    return text


def fix_text(text: str) -> str:
    """The caption-relevant part of ``ftfy.fix_text``'s default fixes (see the module docstring)."""
    text = _fix_mojibake(text)
    text = _TERMINAL_ESCAPES.sub("", text)
    text = "".join(_LIGATURES.get(ch, ch) for ch in text)
    text = "".join(unicodedata.normalize("NFKC", ch) if "\uff01" <= ch <= "\uff5e" else ch for ch in text)
    text = text.replace("\u3000", " ")
    text = re.sub("[‘’‚‛]", "'", text)
    text = re.sub("[“”„‟]", '"', text)
    text = re.sub("\r\n|\r|\u2028|\u2029|\u0085", "\n", text)
    text = _CONTROL.sub("", text)
    return unicodedata.normalize("NFC", text)


def _clean_once(caption: str) -> str:
    caption = ul.unquote_plus(str(caption)).strip().lower()
    caption = re.sub("<person>", "person", caption)
    for pattern in _URL_PATTERNS:
        caption = re.sub(pattern, "", caption)
    caption = html_text(caption)
    caption = re.sub(r"@[\w\d]+\b", "", caption)  # @nickname
    for cjk in _CJK_RANGES:
        caption = re.sub(f"[{cjk}]+", "", caption)
    caption = re.sub(_DASHES, "-", caption)
    caption = re.sub(r"[`´«»“”¨]", '"', caption)
    caption = re.sub(r"[‘’]", "'", caption)
    caption = re.sub(r"&quot;?", "", caption)
    caption = re.sub(r"&amp", "", caption)
    caption = re.sub(r"\d{1,3}\.\d{1,3}\.\d{1,3}\.\d{1,3}", " ", caption)  # ip addresses
    caption = re.sub(r"\d:\d\d\s+$", "", caption)  # article ids
    caption = re.sub(r"\\n", " ", caption)
    caption = re.sub(r"#\d{1,3}\b", "", caption)
    caption = re.sub(r"#\d{5,}\b", "", caption)
    caption = re.sub(r"\b\d{6,}\b", "", caption)
    caption = re.sub(r"[\S]+\.(?:png|jpg|jpeg|bmp|webp|eps|pdf|apk|mp4)", "", caption)  # file names
    caption = re.sub(r"[\"\']{2,}", r'"', caption)
    caption = re.sub(r"[\.]{2,}", r" ", caption)
    caption = re.sub(_BAD_PUNCT, r" ", caption)  # ***AUSVERKAUFT***, #AUSVERKAUFT
    caption = re.sub(r"\s+\.\s+", r" ", caption)
    separators = re.compile(r"(?:\-|\_)")  # this-is-my-cute-cat / this_is_my_cute_cat
    if len(re.findall(separators, caption)) > 3:
        caption = re.sub(separators, " ", caption)
    caption = fix_text(caption)
    caption = html.unescape(html.unescape(caption))
    caption = re.sub(r"\b[a-zA-Z]{1,3}\d{3,15}\b", "", caption)  # jc6640
    caption = re.sub(r"\b[a-zA-Z]+\d+[a-zA-Z]+\b", "", caption)  # jc6640vc
    caption = re.sub(r"\b\d+[a-zA-Z]+\d+\b", "", caption)  # 6640vc231
    caption = re.sub(r"(worldwide\s+)?(free\s+)?shipping", "", caption)
    caption = re.sub(r"(free\s)?download(\sfree)?", "", caption)
    caption = re.sub(r"\bclick\b\s(?:for|on)\s\w+", "", caption)
    caption = re.sub(r"\b(?:png|jpg|jpeg|bmp|webp|eps|pdf|apk|mp4)(\simage[s]?)?", "", caption)
    caption = re.sub(r"\bpage\s+\d+\b", "", caption)
    caption = re.sub(r"\b\d*[a-zA-Z]+\d+[a-zA-Z]+\d+[a-zA-Z\d]*\b", r" ", caption)  # j2d1a2a...
    caption = re.sub(r"\b\d+\.?\d*[xх×]\d+\.?\d*\b", "", caption)  # 1920x1080
    caption = re.sub(r"\b\s+\:\s+", r": ", caption)
    caption = re.sub(r"(\D[,\./])\b", r"\1 ", caption)
    caption = re.sub(r"\s+", " ", caption)
    caption = re.sub(r"^[\"\']([\w\W]+)[\"\']$", r"\1", caption)
    caption = re.sub(r"^[\'\_,\-\:;]", r"", caption)
    caption = re.sub(r"[\'\_,\-\:\-\+]$", r"", caption)
    caption = re.sub(r"^\.\S+$", "", caption)
    return caption.strip()


def clean_caption(caption: str) -> str:
    """The official cleaning, applied twice as the official embedder does."""
    return _clean_once(_clean_once(caption))
