"""A tiny PixArt-Sigma LCM distillation (KV compression in the last half of the blocks, the Sigma teacher's own
``attn.sr`` / ``attn.norm`` weights) under 2 gloo ranks: FSDP2, which shards the student, the frozen teacher and the
EMA target (compression convs included), trains exactly like DDP: same losses, same weights, EMA and target."""

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from diffusion.registry import MODELS
from tests.engine.standins import tiny_config
from tests.engine.test_distributed_lcm import MODEL, _assert_close, _losses, _step_dir, _tensors, _torchrun
from tests.model.helpers import randomize

# patch 1 on the stand-in's 4x4 latents: a 4x4 token grid whose keys/values block 1 compresses to 2x2
SIGMA = dict(MODEL, patch_size=1, kv_compress_config=dict(sampling="conv", scale_factor=2, kv_compress_layer=[1]))


def _config(tmp_path: Path, parallel: str) -> dict:
    teacher = tmp_path / "sigma_teacher.safetensors"
    if not teacher.is_file():  # a Sigma teacher: its compression weights are trained ones, not the mean-pool init
        model = randomize(MODELS.build(dict(SIGMA)), std=0.05, seed=5)
        save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(teacher))
    return tiny_config(
        model=dict(SIGMA),
        weights=dict(teacher=str(teacher)),
        method=dict(type="LCMDistillation", ema_decay=0.5),
        data=dict(type="EngineMemDataset", size=8),
        optimizer=dict(type="AdamW", lr=1e-3, weight_decay=0.0),
        lr_schedule=dict(type="constant", warmup_steps=0),
        train=dict(max_steps=4, batch_size=2, ema_rate=0.9, seed=3, num_workers=0, parallel=parallel),
        checkpoint=dict(every=2, keep_last=5),
        validation=None,
    )


@pytest.mark.slow
def test_fsdp_matches_ddp_for_a_kv_compressed_lcm(tmp_path):
    for parallel in ("ddp", "fsdp"):
        result = _torchrun(_config(tmp_path, parallel), tmp_path / parallel)
        assert result.returncode == 0, result.stderr[-3000:]
    ddp, fsdp = _losses(tmp_path / "ddp"), _losses(tmp_path / "fsdp")
    assert sorted(ddp) == [1, 2, 3, 4]
    assert list(fsdp.values()) == pytest.approx(list(ddp.values()), rel=1e-4, abs=1e-6)
    for step in (2, 4):  # student, EMA and LCM target alike, the compression's conv and LayerNorm included
        saved = _tensors(_step_dir(tmp_path / "fsdp", step))
        assert {"model.blocks.1.attn.sr.weight", "method.target.blocks.1.attn.norm.weight"} <= set(saved)
        _assert_close(saved, _tensors(_step_dir(tmp_path / "ddp", step)), 1e-5)
    start = load_file(str(tmp_path / "sigma_teacher.safetensors"))["blocks.1.attn.sr.weight"]
    trained = _tensors(_step_dir(tmp_path / "fsdp", 4))["model.blocks.1.attn.sr.weight"]
    assert not torch.equal(trained, start)  # the student's compression trains
