"""Small helpers the shard tests share: run a rank's stream for one epoch or n batches, write odd shards by hand."""

import io
import itertools

import numpy as np
import torch
from PIL import Image
from webdataset import TarWriter

from diffusion.data.shards import ShardDataset


def png(size=(32, 32), value=128) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(np.full((*size, 3), value, np.uint8)).save(buffer, format="PNG")
    return buffer.getvalue()


def write_tar(path, samples: list[dict]) -> None:
    """A shard of hand-made samples (``__key__`` + suffix → bytes), members as given."""
    with open(path, "wb") as f:
        writer = TarWriter(f, encoder=False, mtime=0)
        for sample in samples:
            writer.write(sample)
        writer.close()


def one_epoch(stream) -> list[dict]:
    """The batches of the stream's current epoch (the stream then stands at the next epoch's first batch)."""
    epoch, batches = stream.epoch, []
    for batch in stream:
        if stream.epoch != epoch:
            break
        batches.append(batch)
    return batches


def take(stream, n: int) -> list[dict]:
    return list(itertools.islice(iter(stream), n))


def keys(batches: list[dict]) -> list[str]:
    return [key for batch in batches for key in batch["key"]]


def streams(urls, world_size: int, workers: int, batch_size: int, seed: int = 0, **kwargs):
    """One (dataset, stream) per simulated rank: each rank owns its dataset (its report), as in a real run."""
    out = []
    for rank in range(world_size):
        dataset = ShardDataset(urls, **{"resolution": 32, **kwargs})
        out.append(dataset.stream(batch_size, rank=rank, world_size=world_size, num_workers=workers, seed=seed))
    return out


def checkpoint_roundtrip(state: dict, tmp_path) -> dict:
    """The state as a trainer checkpoint would hold it (torch.save, then torch.load with weights_only)."""
    torch.save(state, tmp_path / "data_state.pt")
    return torch.load(tmp_path / "data_state.pt", weights_only=True)
