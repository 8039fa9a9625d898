"""LCM student variants as plain weights (diffusion/model/students.py, via diffusion.build.load_model): LCM-LoRA
merged (full and adapters-only checkpoints) against the live peft model, the peft/diffusers LoRA export against
peft on diffusers' transformer, and the w-embedding folded at one w against the student fed that w."""

import pytest
import torch
from diffusers import PixArtTransformer2DModel
from safetensors.torch import save_file

from diffusion.build import load_model
from diffusion.methods.lcm_distillation import add_lora
from diffusion.model import students
from diffusion.model.diffusers_format import diffusers_forward, save_diffusers
from tests.model.helpers import TINY_ARCH, inputs, tiny

ARCH = TINY_ARCH
RANK, ALPHA = 4, 8.0


def _save(state: dict, path) -> str:
    save_file({k: v.contiguous() for k, v in state.items()}, str(path))
    return str(path)


def _lora_student(ms: bool = True):
    """(base weights, the peft student with random non-zero adapters)."""
    base = tiny(ms)
    student = tiny(ms)
    add_lora(student, RANK, ALPHA, ("qkv", "attn.proj", "q_linear", "kv_linear", "fc1", "fc2", "t_block.1"))
    g = torch.Generator().manual_seed(7)
    with torch.no_grad():
        for name, p in student.named_parameters():
            if "lora_" in name:
                p.copy_(torch.randn(p.shape, generator=g) * 0.2)
    return base, student.eval()


def _cfg(teacher=None, ms=True):
    model = dict(type="PixArtMS" if ms else "PixArt", **ARCH)
    return dict(
        model=model,
        weights=dict(teacher=teacher),
        method=dict(type="LCMDistillation", lora=dict(rank=RANK, alpha=ALPHA)),
    )


@pytest.mark.parametrize("form", ["full", "adapters_only"])
def test_lora_checkpoint_loads_merged(tmp_path, form):
    base, student = _lora_student()
    state = student.state_dict()
    if form == "adapters_only":  # what a model with frozen parameters saves: the trained tensors only
        state = {k: v for k, v in state.items() if "lora_" in k}
    step = tmp_path / "step_0000010"
    step.mkdir()
    _save(state, step / "model.safetensors")
    cfg = _cfg(teacher=_save(base.state_dict(), tmp_path / "base.safetensors"))  # an LCM config: its teacher
    merged = load_model(cfg, step)
    x, t, y, mask, info = inputs()
    with torch.no_grad():
        want, got = student(x, t, y, mask, info), merged(x, t, y, mask, info)
        plain = base(x, t, y, mask, info)
    assert (want - plain).abs().max() > 1e-2  # the adapters matter
    torch.testing.assert_close(got, want, rtol=0, atol=1e-5)


def test_lora_needs_its_config(tmp_path):
    _, student = _lora_student()
    path = _save({k: v for k, v in student.state_dict().items() if "lora_" in k}, tmp_path / "lora.safetensors")
    with pytest.raises(KeyError, match="only LoRA adapters.*weights.base.*unset"):
        load_model(_cfg(teacher=None), path)
    cfg = _cfg(teacher=path)
    cfg["method"] = dict(type="LCMDistillation", lora=None)
    with pytest.raises(KeyError, match="method.lora"):
        load_model(cfg, _save(student.state_dict(), tmp_path / "full.safetensors"))
    cfg["method"]["lora"] = dict(rank=RANK * 2)
    with pytest.raises(ValueError, match="rank 8"):
        load_model(cfg, tmp_path / "full.safetensors")


def test_peft_lora_export_matches_peft_on_diffusers(tmp_path):
    from peft import PeftModel

    base, student = _lora_student(ms=False)
    save_diffusers(base, tmp_path / "transformer")
    out = students.export_peft_lora(student.state_dict(), RANK, ALPHA, tmp_path / "lora")
    ref = PixArtTransformer2DModel.from_pretrained(tmp_path / "transformer").eval()
    ref = PeftModel.from_pretrained(ref, str(out)).eval()
    x, t, y, mask, info = inputs()
    with torch.no_grad():
        want = student(x, t, y, mask, info)
        got = diffusers_forward(ref.base_model.model, x, t, y, mask, info)
    torch.testing.assert_close(got, want, rtol=0, atol=1e-4)


def test_folded_guidance_embedding_samples_like_the_student_at_that_w():
    student = tiny(True, guidance_embedding=True)
    plain = tiny(True, random=False)
    plain.load_state_dict(students.fold_guidance_embedding(student, 4.5))
    x, t, y, mask, info = inputs()
    with torch.no_grad():
        want = student(x, t, y, mask, dict(info, guidance=torch.full((3,), 4.5)))
        other = student(x, t, y, mask, dict(info, guidance=torch.full((3,), 2.0)))
        got = plain(x, t, y, mask, info)
    assert (want - other).abs().max() > 1e-3
    torch.testing.assert_close(got, want, rtol=0, atol=1e-5)
