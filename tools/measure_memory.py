"""Memory of a short training run, per rank: what PixArt-delta LCD (§3.3: teacher, student and EMA target of 0.6 B
parameters each, plus T5-XXL for the sample grids) holds, so that a change of the trainer can be measured.

Reports, per rank: the peak resident set size of the process (``resource.getrusage``), the peak CUDA allocation when
on a GPU, and the bytes of model tensors the trainer holds, by owner (the trained network, the method's frozen
networks, the EMA shadow, optimizer state, validation: a second network copy or a resident text encoder), counting
only this rank's shards under FSDP.

    python tools/measure_memory.py configs/lcm/tiny_lcm.py --random-teacher --steps 4 --out output/memory/one.json
    torchrun --nproc_per_node 2 tools/measure_memory.py configs/lcm/tiny_lcm.py --random-teacher --steps 4 \\
        --cfg-options train.parallel=fsdp --out output/memory/fsdp.json

``--random-teacher`` writes a random ``cfg.model`` as the teacher (for enlarged tiny models via ``--cfg-options
model.hidden_size=...``); ``--embedded-num N`` builds the embedded default with N images under the work dir.
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
from pathlib import Path

import torch
from mmengine.config import Config, DictAction
from safetensors.torch import save_file
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from diffusion.engine import Trainer, dist  # noqa: E402
from diffusion.registry import MODELS  # noqa: E402


def _local_bytes(tensor: torch.Tensor, seen: set) -> int:
    local = tensor.to_local() if hasattr(tensor, "to_local") else tensor
    if local.device.type == "meta":
        return 0
    key = (local.untyped_storage().data_ptr(), local.device.type)
    if key in seen:
        return 0
    seen.add(key)
    return local.untyped_storage().nbytes()


def _module_tensors(module: nn.Module | None) -> list[torch.Tensor]:
    if module is None:
        return []
    return [*module.parameters(), *module.buffers()]


def held_tensor_mib(trainer: Trainer) -> dict[str, float]:
    """MiB of tensors by owner; each storage is counted once, under the first owner that holds it."""
    method = trainer.method
    frozen = getattr(method, "frozen_networks", None)
    if frozen is not None:
        frozen_nets = frozen()
    else:  # trainers from before frozen_networks(): the LCM method's private copies
        frozen_nets = [*getattr(method, "_teacher", []), *(getattr(method, "_target", None) or [])]
    validation = [getattr(trainer, "val_model", None)]
    pipeline = getattr(trainer, "pipeline", None)
    text_encoder = getattr(pipeline, "text_encoder", None)
    validation += [getattr(text_encoder, "model", None)]
    owners = {
        "trained": _module_tensors(trainer.model),
        "frozen": [t for net in frozen_nets for t in _module_tensors(net)],
        "ema": list(trainer.ema.shadow.values()) if trainer.ema is not None else [],
        "optimizer": [v for s in trainer.optimizer.state.values() for v in s.values() if torch.is_tensor(v)],
        "validation": [t for m in validation for t in _module_tensors(m)],
    }
    seen: set = set()
    out = {name: sum(_local_bytes(t, seen) for t in tensors) / 2**20 for name, tensors in owners.items()}
    out["total"] = sum(out.values())
    return out


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("config")
    parser.add_argument("--steps", type=int, default=4, help="optimizer steps (one validation grid at the end)")
    parser.add_argument("--work-dir", default="output/memory/run")
    parser.add_argument("--random-teacher", action="store_true", help="a random cfg.model as load_from")
    parser.add_argument("--embedded-num", type=int, default=256, help="images of the embedded default, if used")
    parser.add_argument("--cfg-options", nargs="+", action=DictAction, default={})
    parser.add_argument("--out", default=None, help="JSON report (rank 0)")
    args = parser.parse_args(argv)

    cfg = Config.fromfile(args.config)
    cfg.merge_from_dict(args.cfg_options)
    work_dir = Path(args.work_dir)
    dist.init()
    if dist.is_main():
        work_dir.mkdir(parents=True, exist_ok=True)
        if cfg.data.get("root") == "output/embedded_data":
            from diffusion.data import ensure_embedded_default

            root = work_dir.parent / f"embedded_data_{args.embedded_num}"
            ensure_embedded_default(root, num=args.embedded_num, text_encoder_path=cfg.text_encoder["path"])
        if args.random_teacher:
            torch.manual_seed(0)
            model = MODELS.build(dict(cfg.model))
            save_file(
                {k: v.contiguous() for k, v in model.state_dict().items()}, str(work_dir / "teacher.safetensors")
            )
    dist.barrier()
    if cfg.data.get("root") == "output/embedded_data":
        cfg.data.root = str(work_dir.parent / f"embedded_data_{args.embedded_num}")
    if args.random_teacher:
        cfg.load_from = str(work_dir / "teacher.safetensors")
    cfg.merge_from_dict({"train.max_steps": args.steps, "checkpoint.every": 10**9})
    if cfg.get("validation"):
        cfg.merge_from_dict({"validation.every": 10**9})  # only the final grid
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    trainer = Trainer(cfg, work_dir, resume=None)
    trainer.train()
    report = dict(
        rank=dist.rank(),
        world=dist.world_size(),
        parallel=trainer.train_cfg["parallel"],
        peak_rss_mib=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        cuda_peak_mib=torch.cuda.max_memory_allocated() / 2**20 if torch.cuda.is_available() else None,
        tensors_mib=held_tensor_mib(trainer),
    )
    reports = [report]
    if dist.is_initialized():
        reports = [None] * dist.world_size()
        torch.distributed.all_gather_object(reports, report)
    if dist.is_main():
        text = json.dumps(reports, indent=2)
        print(text)
        if args.out:
            Path(args.out).parent.mkdir(parents=True, exist_ok=True)
            Path(args.out).write_text(text)
    dist.cleanup()
    return reports[0]


if __name__ == "__main__":
    main()
