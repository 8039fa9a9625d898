"""CAME (PixArt-Sigma's optimizer) through our optimizer builder: the same steps as ``came_pytorch.CAME`` built
directly with the official arguments, a state_dict round trip, a trainer run that resumes exactly, and the FSDP2
limitation refused up front with the reason."""

import io
import json

import pytest
import torch
from came_pytorch import CAME

from diffusion.engine import Trainer
from diffusion.engine import checkpoint as ckpt
from diffusion.engine.optim import build_optimizer
from tests.engine.standins import tiny_config

OFFICIAL = dict(type="CAME", lr=2e-5, weight_decay=0.0, betas=(0.9, 0.999, 0.9999), eps=(1e-30, 1e-16))


def _params(seed: int = 0) -> list[torch.nn.Parameter]:
    """A matrix (factored second moments), a 4-D conv weight (factored over its last two dims) and a vector."""
    g = torch.Generator().manual_seed(seed)
    shapes = [(6, 5), (4, 1, 2, 2), (7,)]
    return [torch.nn.Parameter(torch.randn(s, generator=g)) for s in shapes]


def _step(optimizer: torch.optim.Optimizer, params: list[torch.nn.Parameter], seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    for p in params:
        p.grad = torch.randn(p.shape, generator=g)
    optimizer.step()


def test_built_came_steps_like_came_pytorch_with_the_official_arguments():
    ours_params, ref_params = _params(), _params()
    ours = build_optimizer(ours_params, OFFICIAL, lr=OFFICIAL["lr"])
    ref = CAME(ref_params, lr=2e-5, weight_decay=0.0, betas=(0.9, 0.999, 0.9999), eps=(1e-30, 1e-16))
    assert type(ours) is CAME and ours.defaults == ref.defaults and ours.defaults["clip_threshold"] == 1.0
    for seed in range(3):
        _step(ours, ours_params, seed)
        _step(ref, ref_params, seed)
        for a, b in zip(ours_params, ref_params):
            assert torch.equal(a, b)
    assert not torch.equal(ours_params[0], _params()[0])  # it moved
    assert {"exp_avg_sq_row", "exp_avg_sq_col"} <= set(ours.state[ours_params[0]])  # factored for a matrix


def test_came_state_dict_round_trip_continues_exactly():
    params = _params()
    optimizer = build_optimizer(params, OFFICIAL, lr=1e-3)
    for seed in range(2):
        _step(optimizer, params, seed)
    copy = [torch.nn.Parameter(p.detach().clone()) for p in params]
    resumed = build_optimizer(copy, OFFICIAL, lr=1e-3)
    buffer = io.BytesIO()  # as a checkpoint: saved, then loaded safely (state_dict() holds the live tensors)
    torch.save(optimizer.state_dict(), buffer)
    buffer.seek(0)
    resumed.load_state_dict(torch.load(buffer, weights_only=True))
    for seed in (2, 3):
        _step(optimizer, params, seed)
        _step(resumed, copy, seed)
    assert all(torch.equal(a, b) for a, b in zip(params, copy))


def test_trainer_with_came_resumes_like_an_uninterrupted_run(tmp_path):
    cfg = tiny_config(optimizer=dict(OFFICIAL, lr=1e-2), train=dict(max_steps=4), checkpoint=dict(every=2))
    Trainer(cfg, tmp_path / "full").train()
    Trainer(cfg, tmp_path / "resumed", resume=str(ckpt.step_dir(tmp_path / "full" / "checkpoints", 2))).train()

    def metrics(run):
        return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]

    assert [m["loss"] for m in metrics(tmp_path / "resumed")] == [m["loss"] for m in metrics(tmp_path / "full")][2:]
    for name in ("model", "ema"):
        a = ckpt.load_tensors(ckpt.step_dir(tmp_path / "full" / "checkpoints", 4) / f"{name}.safetensors")
        b = ckpt.load_tensors(ckpt.step_dir(tmp_path / "resumed" / "checkpoints", 4) / f"{name}.safetensors")
        assert all(torch.equal(a[k], b[k]) for k in a), name


def test_came_on_dtensor_parameters_is_refused_with_the_reason(tmp_path):
    """came-pytorch cannot step FSDP2's DTensor parameters (shown here on a one-rank mesh, the same error as on 2
    gloo ranks under torchrun); the builder says so before step 1 instead of failing inside the first step."""
    import torch.distributed as dist
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.tensor import Shard, distribute_tensor

    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    try:
        mesh = init_device_mesh("cpu", (1,))
        param = torch.nn.Parameter(distribute_tensor(torch.randn(4, 3), mesh, [Shard(0)]))
        param.grad = distribute_tensor(torch.randn(4, 3), mesh, [Shard(0)])
        with pytest.raises(RuntimeError, match="mixed torch.Tensor and DTensor"):
            CAME([param], lr=1e-3).step()  # the limitation itself, in came-pytorch
        with pytest.raises(ValueError, match=r"CAME.*FSDP.*parallel='ddp'"):
            build_optimizer([param], OFFICIAL, lr=1e-3)
        assert build_optimizer([param], dict(type="AdamW", lr=1e-3), lr=1e-3) is not None
    finally:
        dist.destroy_process_group()


def test_unknown_optimizer_type_names_the_choices():
    with pytest.raises(KeyError, match=r"'Lion'.*CAME"):
        build_optimizer(_params(), dict(type="Lion", lr=1e-3), lr=1e-3)
