"""Training from WebDataset tar shards: writing them (writer.py, ``tools/make_shards.py``), the dataset registered
as ``ShardDataset`` (dataset.py) and its resumable per-rank batch stream (stream.py, layout.py, reader.py, samples.py).
"""

from diffusion.data.shards.dataset import ShardDataset, expand_shard_urls
from diffusion.data.shards.samples import IMAGE_EXTENSIONS, ReadSpec
from diffusion.data.shards.stream import ShardStream
from diffusion.data.shards.writer import ShardReport, make_shards, read_manifest

__all__ = [
    "IMAGE_EXTENSIONS",
    "ReadSpec",
    "ShardDataset",
    "ShardReport",
    "ShardStream",
    "expand_shard_urls",
    "make_shards",
    "read_manifest",
]
