"""TextEncoder: the tiny word-level T5 is deterministic and loads through the same path as T5-XXL."""

import pytest
import torch

from diffusion.data import TextEncoder, ensure_tiny_text_encoder, make_tiny_text_encoder


def _bytes(directory):
    return {p.name: p.read_bytes() for p in sorted(directory.iterdir())}


def test_tiny_text_encoder_is_byte_deterministic(tmp_path):
    state = torch.random.get_rng_state()
    a = _bytes(make_tiny_text_encoder(tmp_path / "a", seed=0))
    b = _bytes(make_tiny_text_encoder(tmp_path / "b", seed=0))
    c = _bytes(make_tiny_text_encoder(tmp_path / "c", seed=1))
    assert "model.safetensors" in a and "config.json" in a
    assert a == b
    assert a["model.safetensors"] != c["model.safetensors"]
    assert torch.equal(state, torch.random.get_rng_state()), "global RNG must be left untouched"


def test_masks_match_prompt_word_counts(tiny_text_encoder_dir):
    encoder = TextEncoder.from_pretrained(tiny_text_encoder_dir, max_length=10)
    prompts = ["a red circle", "A BLUE square on zebra", " ".join(["red"] * 30)]
    y, y_mask = encoder.encode(prompts)
    assert y.shape == (3, 1, 10, encoder.caption_channels) and y.dtype == torch.float32
    assert y_mask.shape == (3, 10) and y_mask.dtype == torch.long
    lengths = [min(len(p.split()) + 1, 10) for p in prompts]  # one token per word + EOS, truncated
    assert y_mask.sum(1).tolist() == lengths
    for row, n in zip(y_mask, lengths):
        assert row[:n].eq(1).all() and row[n:].eq(0).all()
    assert torch.isfinite(y).all()
    ids = encoder.tokenizer(["a blue zebra"]).input_ids[0]
    assert ids[-1] == encoder.tokenizer.eos_token_id and ids[2] == encoder.tokenizer.unk_token_id  # unknown word


def test_encoding_is_batch_independent_and_repeatable(tiny_text_encoder_dir):
    encoder = TextEncoder.from_pretrained(tiny_text_encoder_dir, max_length=32)
    y_pair, _ = encoder.encode(["a red circle", "a much longer green triangle prompt"])
    y_one, mask_one = encoder.encode(["a red circle"])
    n = int(mask_one.sum())
    torch.testing.assert_close(y_pair[0, :, :n], y_one[0, :, :n], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(encoder.encode(["a red circle"])[0], y_one, rtol=0, atol=0)


def test_missing_directory_names_the_path(tmp_path):
    with pytest.raises(FileNotFoundError, match="nowhere"):
        TextEncoder.from_pretrained(tmp_path / "nowhere")


def test_ensure_creates_once(tmp_path):
    path = ensure_tiny_text_encoder(tmp_path / "t5")
    stamp = (path / "model.safetensors").stat().st_mtime_ns
    ensure_tiny_text_encoder(path)
    assert (path / "model.safetensors").stat().st_mtime_ns == stamp


def test_running_only_to_the_longest_prompt_equals_the_full_padded_pass(tiny_text_encoder_dir):
    encoder = TextEncoder.from_pretrained(tiny_text_encoder_dir, max_length=64)
    prompts = ["a red circle", "a small blue square at the top left"]
    y, mask = encoder.encode(prompts)
    full = encoder.tokenizer(prompts, padding="max_length", max_length=64, truncation=True, return_tensors="pt")
    with torch.no_grad():
        ref = encoder.model(input_ids=full.input_ids, attention_mask=full.attention_mask).last_hidden_state
    assert torch.equal(mask, full.attention_mask.long())
    keep = mask.bool()
    torch.testing.assert_close(y[:, 0][keep], ref[keep], rtol=1e-5, atol=1e-5)
    assert y[:, 0, int(mask.sum(1).max()) :].abs().max() == 0  # beyond the longest prompt: zeros (masked anyway)
