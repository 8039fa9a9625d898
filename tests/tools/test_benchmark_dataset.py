"""``tools/benchmark_dataset.py --shards`` at the smallest sizes: both loaders deliver every batch of an epoch and the
encoding part reports its share of a step (the numbers themselves are the README's, measured at the default sizes)."""

import re

from tests.commands import load_command


def test_shard_benchmark_smoke(tmp_path, capsys):
    argv = ["--shards", "--items", "16", "--image-size", "48x64", "--resolution", "32", "--batch", "4"]
    argv += ["--workers", "0", "--rounds", "1", "--size", "tiny", "--per-shard", "8", "--dir", str(tmp_path)]
    assert load_command("tools/benchmark_dataset.py").main(argv) == 0
    out = capsys.readouterr().out
    assert re.search(r"shards \(decode \+ resize\): \d+ samples/s", out)
    assert re.search(r"feature caches: \d+ samples/s", out)
    assert re.search(r"the encoding's share of a step \(encode \+ fwd\+bwd\): \d+\.\d%", out)
    assert "caption_features 30.0 MiB" in out  # 16 real 120 x 4096 float32 captions
