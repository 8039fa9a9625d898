"""Exact resume from shards (issue 19): a stream stopped after k batches and resumed from its saved position (through
a weights_only checkpoint) gives the batches of an uninterrupted one, key for key and pixel for pixel, on 2 ranks x 2
loader workers, mid-epoch and at an epoch's end; the position of 2 gloo ranks is gathered by state_dict(); another
layout is refused saying what to do, or starts the next epoch when the config asks."""

import json
import socket

import pytest
import torch
import torch.multiprocessing as mp

from diffusion.data.shards import ShardDataset, ShardStream, make_shards
from tests.data.shard_helpers import checkpoint_roundtrip, keys, one_epoch, png, streams, take

N, SIZES = 36, [(32, 32), (16, 40), (40, 16), (32, 32)]  # three buckets at resolution 32
OPTIONS = dict(multi_scale=True, shuffle_buffer=6)


@pytest.fixture(scope="module")
def urls(tmp_path_factory):
    root = tmp_path_factory.mktemp("shard_resume")
    (root / "data").mkdir()
    entries = []
    for i in range(N):
        h, w = SIZES[i % len(SIZES)]
        (root / "data" / f"{i}.png").write_bytes(png((h, w), 7 * i))
        entries.append({"path": f"{i}.png", "prompt": f"picture {i}", "height": h, "width": w})
    (root / "data" / "data_info.json").write_text(json.dumps(entries))
    make_shards(root / "data", root / "shards", per_shard=4, progress=False)  # 9 shards
    return str(root / "shards" / "{00000..00008}.tar")


def _same(a: list[dict], b: list[dict]) -> None:
    assert keys(a) == keys(b)
    for x, y in zip(a, b):
        assert torch.equal(x["image"], y["image"]) and x["prompt"] == y["prompt"]


def _resumed(urls, state, tmp_path, n: int, world_size: int = 2, workers: int = 2, **kwargs) -> list[list[dict]]:
    ranks = streams(urls, world_size, workers, batch_size=2, seed=5, **{**OPTIONS, **kwargs})
    for stream in ranks:
        stream.load_state_dict(checkpoint_roundtrip(state, tmp_path))
    return [take(stream, n) for stream in ranks]


def test_a_resumed_stream_continues_exactly(urls, tmp_path):
    whole = [take(stream, 14) for stream in streams(urls, 2, 2, batch_size=2, seed=5, **OPTIONS)]
    first_epoch = len(one_epoch(streams(urls, 2, 2, batch_size=2, seed=5, **OPTIONS)[0]))
    assert 4 < first_epoch < 14  # the 14 batches cross rank 0's epoch boundary
    for stop in (1, 3, first_epoch, first_epoch + 1):
        ranks = streams(urls, 2, 2, batch_size=2, seed=5, **OPTIONS)
        before = [take(stream, stop) for stream in ranks]
        state = ShardStream.merge_states([stream.local_state_dict() for stream in ranks])
        after = _resumed(urls, state, tmp_path, 14 - stop)
        for rank in range(2):
            _same(before[rank] + after[rank], whole[rank])


def test_loading_leaves_the_global_torch_rng_alone(urls):
    """The trainer's noise comes from torch's RNG: reading an epoch (DataLoader workers included) must not draw."""
    before = torch.get_rng_state()
    one_epoch(streams(urls, 1, 2, batch_size=2, seed=5, **OPTIONS)[0])
    assert torch.equal(before, torch.get_rng_state())


def test_a_stream_without_workers_resumes_too(urls, tmp_path):
    whole = take(streams(urls, 1, 0, batch_size=2, seed=5, **OPTIONS)[0], 12)
    stream = streams(urls, 1, 0, batch_size=2, seed=5, **OPTIONS)[0]
    before = take(stream, 5)
    _same(before + _resumed(urls, stream.state_dict(), tmp_path, 7, world_size=1, workers=0)[0], whole)


def test_another_layout_is_refused_or_starts_the_next_epoch(urls, tmp_path):
    ranks = streams(urls, 2, 2, batch_size=2, seed=5, **OPTIONS)
    for stream in ranks:
        take(stream, 3)
    state = ShardStream.merge_states([stream.local_state_dict() for stream in ranks])
    with pytest.raises(ValueError, match=r"world_size: saved 2, now 4.*same number of ranks.*on_layout_change"):
        streams(urls, 4, 2, batch_size=2, seed=5, **OPTIONS)[0].load_state_dict(state)
    with pytest.raises(ValueError, match=r"readers: saved 2, now 3.*train.num_workers"):
        streams(urls, 2, 3, batch_size=2, seed=5, **OPTIONS)[0].load_state_dict(state)
    with pytest.raises(ValueError, match=r"shards: saved 9, now 8"):
        streams(urls.replace("00008", "00007"), 2, 2, batch_size=2, seed=5, **OPTIONS)[0].load_state_dict(state)
    stream = streams(urls, 4, 2, batch_size=2, seed=5, on_layout_change="next_epoch", **OPTIONS)[3]
    stream.load_state_dict(state)
    assert (stream.epoch, stream.batch_in_epoch) == (1, 0) and "starting epoch 1" in stream.notes[0]
    assert len(take(stream, 2)) == 2
    with pytest.raises(ValueError, match="not a shard stream"):
        stream.load_state_dict({"epoch": 0, "batch_in_epoch": 3})  # a BatchStream position


def test_another_batch_size_continues_from_the_same_samples(urls, tmp_path):
    stream = streams(urls, 1, 0, batch_size=2, seed=5, **OPTIONS)[0]
    seen = keys(take(stream, 3))
    resumed = streams(urls, 1, 0, batch_size=3, seed=5, **OPTIONS)[0]
    resumed.load_state_dict(stream.state_dict())
    rest = keys(one_epoch(resumed))
    assert not set(seen) & set(rest) and "batch size 2 -> 3" in resumed.notes[0]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _gloo_rank(rank: int, port: int, urls: str, out: str) -> None:
    """A rank of a 2-process gloo group: 3 batches, the gathered position (collective), 3 more batches; a stream
    seeded with seed + rank is refused. Without loader workers: they would re-import everything in each spawned rank
    (the workers' part is tested above)."""
    torch.set_num_threads(1)
    torch.distributed.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    try:
        stream = ShardDataset(urls, resolution=32, **OPTIONS).stream(2, rank=rank, world_size=2, num_workers=0, seed=5)
        take(stream, 3)
        state = stream.state_dict()  # every rank calls it
        rest = keys(take(stream, 3))
        per_rank_seed = ShardDataset(urls, resolution=32).stream(2, rank=rank, world_size=2, seed=5 + rank)
        try:
            next(iter(per_rank_seed))
            refused = ""
        except ValueError as error:
            refused = str(error)
        torch.save({"state": state, "rest": rest, "refused": refused}, f"{out}/rank{rank}.pt")
    finally:
        torch.distributed.destroy_process_group()


def test_state_dict_gathers_every_ranks_position_under_gloo(urls, tmp_path):
    mp.spawn(_gloo_rank, args=(_free_port(), urls, str(tmp_path)), nprocs=2, join=True)
    saved = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(2)]
    assert saved[0]["state"] == saved[1]["state"] and all(saved[0]["state"]["ranks"])
    assert all("same seed (train.seed, not seed + rank)" in s["refused"] for s in saved)
    for rank, stream in enumerate(streams(urls, 2, 0, batch_size=2, seed=5, **OPTIONS)):
        stream.load_state_dict(saved[0]["state"])  # what rank 0 would write into the checkpoint
        assert keys(take(stream, 3)) == saved[rank]["rest"]
