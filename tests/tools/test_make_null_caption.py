"""tools/make_null_caption.py: T5("") over every max_length position (diffusers' encode_prompt), which
LCMDistillation(null_caption=FILE) uses under each caption's mask as the official LCM-LoRA script does."""

import torch
from safetensors.torch import load_file
from transformers import AutoTokenizer, T5EncoderModel

from diffusion.data import make_tiny_text_encoder
from diffusion.methods import LCMDistillation
from tests.commands import load_command
from tests.model.helpers import inputs, tiny

main = load_command("tools/make_null_caption.py").main


def test_null_caption_is_t5_of_the_empty_prompt_at_full_length(tmp_path):
    t5 = make_tiny_text_encoder(tmp_path / "t5", d_model=32, num_layers=1)
    out = main(["--text-encoder", str(t5), "--max-length", "16", "--out", str(tmp_path / "null.safetensors")])
    null = load_file(str(out))
    assert set(null) == {"y"} and null["y"].shape == (1, 1, 16, 32)
    tokenizer = AutoTokenizer.from_pretrained(str(t5))  # independently, as diffusers' encode_prompt("") does
    tokens = tokenizer([""], padding="max_length", max_length=16, return_tensors="pt")
    with torch.no_grad():
        want = T5EncoderModel.from_pretrained(str(t5))(**tokens).last_hidden_state
    torch.testing.assert_close(null["y"][:, 0], want, rtol=1e-5, atol=1e-5)
    assert want[0, 1:].abs().sum() > 0  # padding positions hold T5 outputs, not zeros
    main(["--text-encoder", str(t5), "--max-length", "16", "--out", str(tmp_path / "m.safetensors"), "--with-mask"])
    assert load_file(str(tmp_path / "m.safetensors"))["y_mask"].tolist() == [[1] + [0] * 15]


def test_the_method_reads_it(tmp_path):
    t5 = make_tiny_text_encoder(tmp_path / "t5", d_model=32, num_layers=1)
    x, _, y, mask, info = inputs(batch=2)
    out = main(["--text-encoder", str(t5), "--max-length", str(y.shape[2]), "--out", str(tmp_path / "n.safetensors")])
    model = tiny(True, random=True, std=0.05, pe_interpolation=1.0, class_dropout_prob=0.0, caption_channels=32)
    method = LCMDistillation(model, null_caption=str(out))
    y = torch.randn(2, 1, y.shape[2], 32)
    uy, umask = method._uncond(y, mask)
    assert torch.equal(uy[0], load_file(str(out))["y"][0]) and torch.equal(umask, mask)
    loss, _ = method(model, {"x0": x, "y": y, "y_mask": mask, "data_info": info})
    assert torch.isfinite(loss)
