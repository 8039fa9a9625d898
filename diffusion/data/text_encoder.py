"""Caption encoder: a T5 encoder producing the (1, L, C) caption features and (L,) masks PixArt cross-attends to.

PixArt-α/δ use T5-XXL (4096 channels) with 120 tokens, ``padding='max_length'`` and truncation (facts §2, §6). The
same class loads a tiny T5 built by :func:`make_tiny_text_encoder` for the embedded default, so tests and demos go
through exactly the code path real runs use. Its tokenizer is word-level over the embedded captions' words (built
here, no download): with byte-level tokens each attribute is spread over several bytes and a randomly initialised
T5, and the tiny teacher did not learn to use the caption within the demo budget (measured: the eps loss with true,
shuffled and null captions agreed to 3 digits after 1000 steps).
"""

from pathlib import Path
from typing import TYPE_CHECKING

import torch

from diffusion.data.captions import clean_caption as clean
from diffusion.data.embedded import caption_words
from diffusion.model.onednn import onednn_linears

if TYPE_CHECKING:  # transformers takes seconds to import: on use only
    from transformers import PreTrainedTokenizerFast, T5EncoderModel

SPECIAL_TOKENS = ("<pad>", "</s>", "<unk>")  # T5's pad / eos / unk, ids 0, 1, 2


class TextEncoder:
    """A frozen Hugging Face T5 encoder plus its tokenizer.

    Attributes:
        max_length: L, the number of tokens every caption is padded/truncated to.
        caption_channels: C, the width of the encoder output (4096 for T5-XXL).
        clean_caption: apply the official T5-embedder caption cleaning (captions.py) before tokenizing; the
            released PixArt weights were trained on cleaned captions.
        path: the local directory it was loaded from (recorded in the feature caches), None if built in memory.
    """

    def __init__(
        self,
        tokenizer,
        model: "T5EncoderModel",
        max_length: int = 120,
        clean_caption: bool = True,
        path: str | Path | None = None,
    ) -> None:
        self.tokenizer = tokenizer
        self.model = model.eval().requires_grad_(False)
        self.max_length = max_length
        self.clean_caption = clean_caption
        self.path = Path(path) if path is not None else None

    @classmethod
    def from_pretrained(
        cls,
        path: str | Path,
        max_length: int = 120,
        dtype: torch.dtype = torch.float32,
        device: str | torch.device = "cpu",
        clean_caption: bool = True,
    ) -> "TextEncoder":
        """Load the tokenizer and ``T5EncoderModel`` saved in the local directory ``path`` (never the hub)."""
        path = Path(path)
        if not (path / "config.json").is_file():
            raise FileNotFoundError(f"no T5 encoder at {path} (expected {path / 'config.json'})")
        from transformers import AutoTokenizer, T5EncoderModel

        tokenizer = AutoTokenizer.from_pretrained(str(path), local_files_only=True)
        model = T5EncoderModel.from_pretrained(str(path), dtype=dtype, local_files_only=True).to(device)
        return cls(tokenizer, model, max_length, clean_caption=clean_caption, path=path)

    @property
    def caption_channels(self) -> int:
        return self.model.config.d_model

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def to(self, device: str | torch.device) -> "TextEncoder":
        self.model.to(device)
        return self

    def quantize_8bit(self) -> "TextEncoder":
        """Store every linear weight of T5 in int8 with one scale per output channel (torchao's weight-only int8;
        activations stay in the model dtype). PixArt-delta §4 runs T5 in 8 bits to fit 1024² inference in 8 GB;
        torchao is used rather than bitsandbytes because the same kernels run on CPU and GPU (the tests run it)."""
        try:
            from torchao.quantization import Int8WeightOnlyConfig, quantize_
        except ImportError as e:
            raise ImportError("--text-encoder-8bit needs torchao (pip install torchao, see requirements.txt)") from e
        quantize_(self.model, Int8WeightOnlyConfig())
        return self

    @torch.no_grad()
    def encode(self, prompts: list[str], full_length: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        """Encode B prompts.

        The encoder runs only up to the batch's longest prompt and the rest is zero-padded to ``max_length``: T5's
        self-attention masks padding, so the features of real tokens are unchanged (checked in the tests) while a
        typical 10-30 token prompt costs a fraction of the 120-token pass. ``full_length``: T5 runs over all
        ``max_length`` tokens as diffusers' ``encode_prompt`` does, so padding positions hold T5's outputs there (what
        a null caption used under another caption's mask needs, see ``tools/make_null_caption.py``).

        Returns:
            y (B, 1, L, C) float features and y_mask (B, L) long, 1 on real tokens (including EOS), 0 on padding.
        """
        prompts = [clean(p) for p in prompts] if self.clean_caption else list(prompts)
        tokens = self.tokenizer(
            prompts,
            padding="max_length" if full_length else "longest",
            max_length=self.max_length,
            truncation=True,
            return_attention_mask=True,
            return_tensors="pt",
        ).to(self.device)
        with onednn_linears():  # fp32 CPU: oneDNN's inner product, ~3x sgemm at a prompt's few rows
            y = self.model(input_ids=tokens.input_ids, attention_mask=tokens.attention_mask).last_hidden_state
        pad = self.max_length - y.shape[1]
        y = torch.nn.functional.pad(y, (0, 0, 0, pad))  # (B, L, C)
        mask = torch.nn.functional.pad(tokens.attention_mask.long(), (0, pad))
        return y[:, None], mask


def make_tiny_text_encoder(
    path: str | Path,
    seed: int = 0,
    d_model: int = 64,
    num_layers: int = 2,
    num_heads: int = 4,
    d_ff: int = 128,
    words: list[str] | None = None,
) -> Path:
    """Build a small randomly initialised T5 encoder with a word-level tokenizer over ``words`` (default: the
    embedded captions' words) and save both to ``path`` so :meth:`TextEncoder.from_pretrained` loads it like T5-XXL.
    The same seed gives the same bytes; the global RNG state is left untouched."""
    from transformers import T5Config, T5EncoderModel

    path = Path(path)
    tokenizer = word_tokenizer(words if words is not None else caption_words())
    config = T5Config(
        vocab_size=len(tokenizer),
        d_model=d_model,
        d_kv=d_model // num_heads,
        d_ff=d_ff,
        num_layers=num_layers,
        num_heads=num_heads,
        feed_forward_proj="gated-gelu",
        dropout_rate=0.0,
        is_encoder_decoder=False,
        use_cache=False,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = T5EncoderModel(config)
    path.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(str(path))
    tokenizer.save_pretrained(str(path))
    return path


def word_tokenizer(words: list[str]) -> "PreTrainedTokenizerFast":
    """Lower-cased whitespace words -> ids (unknown words -> ``<unk>``), EOS appended, T5's special-token ids."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab = {tok: i for i, tok in enumerate(SPECIAL_TOKENS)}
    vocab.update({w: len(SPECIAL_TOKENS) + i for i, w in enumerate(sorted(set(words) - set(SPECIAL_TOKENS)))})
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.post_processor = processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", 1)])
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="</s>", unk_token="<unk>")


def ensure_tiny_text_encoder(path: str | Path, seed: int = 0) -> Path:
    """Create the tiny text encoder at ``path`` unless one is already there."""
    path = Path(path)
    if not (path / "config.json").is_file():
        make_tiny_text_encoder(path, seed=seed)
    return path
