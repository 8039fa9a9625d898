"""diffusion/eval/sampling.py + ``tools/eval_fid.py sample`` under a 2-rank gloo process group: every global index is
written exactly once, a killed run resumes without rewriting finished images, and the images do not depend on the
number of ranks."""

import os
import socket
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.multiprocessing as mp
from PIL import Image

from diffusion.data.embedded import VALIDATION_PROMPTS
from diffusion.eval.sampling import image_name, read_prompts, shard_batches
from tests.commands import load_command
from tests.eval.helpers import tiny_checkpoint

NUM, BATCH = 10, 2


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _rank(rank: int, world: int, port: int, argv: list[str], log_dir: str, die_after: int | None) -> None:
    """One torchrun-like rank running the tool; logs each PNG it writes; with ``die_after`` it is killed
    (``os._exit``: no cleanup) when it starts decoding batch ``die_after + 1``."""
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank))
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    from diffusion.eval import sampling
    from diffusion.pipeline import Pipeline

    eval_fid = load_command("tools/eval_fid.py")

    save = sampling._save_atomic

    def logged(image, path):
        save(image, path)
        with open(Path(log_dir) / f"rank{rank}.log", "a") as log:
            log.write(path.name + "\n")

    sampling._save_atomic = logged
    if die_after is not None:
        decode, calls = Pipeline.decode, [0]

        def dying(self, z):
            calls[0] += 1
            if calls[0] > die_after:
                os._exit(17)
            return decode(self, z)

        Pipeline.decode = dying
    eval_fid.main(argv)


def test_shards_cover_every_index_once():
    for num, batch, world in [(10, 2, 2), (7, 3, 2), (30, 4, 8), (3, 16, 4)]:
        indices = [i for r in range(world) for b in shard_batches(num, batch, r, world) for i in b]
        assert sorted(indices) == list(range(num))
    with pytest.raises(ValueError, match="rank 2 outside world size 2"):
        shard_batches(4, 2, rank=2, world_size=2)


def test_two_gloo_ranks_write_each_index_once_and_resume_after_a_kill(tmp_path):
    config, weights = tiny_checkpoint(tmp_path)
    (tmp_path / "prompts.txt").write_text("\n".join(VALIDATION_PROMPTS[i % 8] for i in range(NUM)) + "\n")
    common = ["--config", str(config), "--checkpoint", str(weights), "--prompts", str(tmp_path / "prompts.txt")]
    common += ["--sampler", "lcm", "--steps", "2", "--batch-size", str(BATCH), "--device", "cpu"]
    out, logs = tmp_path / "sharded", tmp_path / "logs"
    logs.mkdir()
    argv = ["sample", *common, "--out", str(out)]
    with pytest.raises(mp.ProcessExitedException):  # both ranks are killed after their first batch
        mp.spawn(_rank, args=(2, _free_port(), argv, str(logs), 1), nprocs=2, join=True)
    first = {p.name: p.stat().st_mtime_ns for p in out.glob("*.png")}
    assert 0 < len(first) < NUM
    mp.spawn(_rank, args=(2, _free_port(), argv, str(logs), None), nprocs=2, join=True)

    written = Counter(line for log in logs.glob("*.log") for line in log.read_text().split())
    assert written == Counter(image_name(i) for i in range(NUM))  # each index exactly once over both runs
    assert all(p.stat().st_mtime_ns == first[p.name] for p in out.glob("*.png") if p.name in first)
    assert read_prompts(out / "prompts.txt") == read_prompts(tmp_path / "prompts.txt")
    assert not [p for p in out.iterdir() if p.name.startswith(".")]  # no temporary files left

    main = load_command("tools/eval_fid.py").main

    main(["sample", *common, "--out", str(tmp_path / "single")])  # one process, no process group
    for i in range(NUM):
        a, b = (np.asarray(Image.open(d / image_name(i))) for d in (out, tmp_path / "single"))
        assert np.array_equal(a, b), f"image {i} depends on the sharding"


def test_control_folder_needs_a_pipeline_that_takes_control(tmp_path):
    main = load_command("tools/eval_fid.py").main

    config, weights = tiny_checkpoint(tmp_path)
    (tmp_path / "prompts.txt").write_text(VALIDATION_PROMPTS[0] + "\n")
    (tmp_path / "control").mkdir()
    Image.new("RGB", (32, 32)).save(tmp_path / "control" / "00000.png")
    argv = [
        "sample",
        "--config",
        str(config),
        "--checkpoint",
        str(weights),
        "--prompts",
        str(tmp_path / "prompts.txt"),
    ]
    argv += ["--out", str(tmp_path / "out"), "--control", str(tmp_path / "control"), "--device", "cpu"]
    import inspect

    from diffusion.pipeline import Pipeline

    if "control" in inspect.signature(Pipeline.sample_latents).parameters:  # the ControlNet pipeline has landed
        with pytest.raises(ValueError, match="ControlNet"):  # a plain PixArt checkpoint takes no control input
            main(argv)
    else:
        with pytest.raises(ValueError, match="does not take control="):
            main(argv)


def test_control_folder_feeds_a_controlnet(tmp_path):
    """A ControlNet config (the base from ``weights.base``, one trainable copy) samples one image per control image."""
    main = load_command("tools/eval_fid.py").main

    config, weights = tiny_checkpoint(tmp_path, depth=2)  # a ControlNet copies at most depth - 1 blocks
    controlnet_config = tmp_path / "tiny_controlnet.py"
    controlnet_config.write_text(
        f"_base_ = [{str(config)!r}]\nweights = dict(base={str(weights)!r})\ncontrolnet = dict(copy_blocks=1)\n"
    )
    (tmp_path / "prompts.txt").write_text("\n".join(VALIDATION_PROMPTS[:3]) + "\n")
    (tmp_path / "control").mkdir()
    for i in range(3):
        Image.new("RGB", (40, 40), (80 * i, 0, 0)).save(tmp_path / "control" / f"edge_{i}.png")  # resized to 32
    argv = ["sample", "--config", str(controlnet_config), "--prompts", str(tmp_path / "prompts.txt"), "--sampler"]
    argv += ["lcm", "--steps", "1", "--out", str(tmp_path / "out"), "--control", str(tmp_path / "control")]
    main([*argv, "--device", "cpu", "--batch-size", "2"])
    assert sorted(p.name for p in (tmp_path / "out").glob("*.png")) == [image_name(i) for i in range(3)]
    (tmp_path / "control" / "edge_2.png").unlink()
    with pytest.raises(ValueError, match="has 2 images for 3 prompts"):
        main([*argv, "--device", "cpu"])
