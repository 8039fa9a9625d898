"""tools/make_shards.py: a data folder becomes img2dataset-layout shards with a manifest; bad items listed; the same
input gives the same bytes; a killed run leaves no partial shard named as complete, and a rerun redoes only what
changed."""

import hashlib
import json
import tarfile

import pytest

from diffusion.data.embedded import make_embedded_data
from diffusion.data.shards import make_shards, read_manifest
from diffusion.data.shards import writer as shard_writer
from tests.commands import load_command

main = load_command("tools/make_shards.py").main

N = 11


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return make_embedded_data(tmp_path_factory.mktemp("shards_src") / "data", num=N, seed=0).parent


def _bytes(folder) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


def test_layout_manifest_and_determinism(data, tmp_path, capsys):
    assert main([str(data), "--out", str(tmp_path / "a"), "--per-shard", "4"]) == 0
    assert '"ShardDataset", urls="' in capsys.readouterr().out
    names = [m.name for m in tarfile.open(tmp_path / "a" / "00000.tar")]
    assert names[:4] == ["000000000.control.png", "000000000.json", "000000000.png", "000000000.txt"]
    with tarfile.open(tmp_path / "a" / "00000.tar") as tar:
        member = tar.getmember("000000000.json")
        assert (member.mtime, member.uid, member.gid) == (0, 0, 0)
        meta = json.loads(tar.extractfile(member).read())
        prompt = tar.extractfile("000000000.txt").read().decode()
    entry = json.loads((data / "data_info.json").read_text())[0]
    assert meta == {"key": "000000000", "path": entry["path"], "height": 32, "width": 32,
                    "control_path": entry["control_path"]}  # fmt: skip
    assert prompt == entry["prompt"]
    manifest = read_manifest(tmp_path / "a")
    assert [s["samples"] for s in manifest["shards"]] == [4, 4, 3] and manifest["samples"] == N
    assert manifest["urls"] == "{00000..00002}.tar" and manifest["skipped"] == []
    for shard in manifest["shards"]:
        content = (tmp_path / "a" / shard["name"]).read_bytes()
        assert shard["bytes"] == len(content) and shard["sha256"] == hashlib.sha256(content).hexdigest()
    make_shards(data, tmp_path / "b", per_shard=4, progress=False)
    assert _bytes(tmp_path / "a") == _bytes(tmp_path / "b")  # the same input, the same bytes


def test_bad_items_are_skipped_and_listed(tmp_path, capsys):
    data = make_embedded_data(tmp_path / "data", num=5, seed=0).parent
    entries = json.loads((data / "data_info.json").read_text())
    (data / entries[1]["path"]).write_bytes((data / entries[1]["path"]).read_bytes()[:40])  # truncated
    (data / entries[2]["path"]).unlink()
    entries[3]["height"] = 64  # declared 64x32, the image is 32x32
    (data / "data_info.json").write_text(json.dumps(entries))
    assert main([str(data), "--out", str(tmp_path / "s"), "--strict"]) == 1
    out = capsys.readouterr().out
    assert "3 item(s) skipped" in out
    for index, reason in [(1, "Error"), (2, "No such file"), (3, "declares height 64, width 32")]:
        assert f"skipped: {entries[index]['path']}: " in out and reason in out
    manifest = read_manifest(tmp_path / "s")
    assert manifest["samples"] == 2 and [path for path, _ in manifest["skipped"]] == [e["path"] for e in entries[1:4]]
    with tarfile.open(tmp_path / "s" / "00000.tar") as tar:  # keys stay the items' data_info indices
        assert sorted({m.name.split(".")[0] for m in tar}) == ["000000000", "000000004"]


def test_a_killed_run_leaves_no_partial_shard_and_a_rerun_redoes_only_what_changed(tmp_path, monkeypatch):
    data = make_embedded_data(tmp_path / "data", num=N, seed=0).parent
    make_shards(data, tmp_path / "whole", per_shard=3, progress=False)
    real, calls = shard_writer._write_shard, []

    def dies_on_the_third(root, items, path):
        calls.append(path.name)
        if len(calls) == 3:  # killed halfway through writing the third shard
            path.with_name(path.name + ".tmp").write_bytes(b"half a shard")
            raise KeyboardInterrupt
        real(root, items, path)

    monkeypatch.setattr(shard_writer, "_write_shard", dies_on_the_third)
    with pytest.raises(KeyboardInterrupt):
        make_shards(data, tmp_path / "out", per_shard=3, progress=False)
    out = tmp_path / "out"
    assert sorted(p.name for p in out.glob("*.tar")) == ["00000.tar", "00001.tar"]  # no 00002.tar, and no manifest
    assert not (out / "manifest.json").exists() and (out / "manifest.partial.json").exists()
    monkeypatch.setattr(shard_writer, "_write_shard", real)
    report = make_shards(data, out, per_shard=3, progress=False)
    assert report.reused == ["00000.tar", "00001.tar"]
    assert _bytes(out) == _bytes(tmp_path / "whole")  # the .tmp and the partial manifest are gone too

    report = make_shards(data, out, per_shard=5, progress=False)
    assert report.reused == [] and len(report.shards) == 3  # another --per-shard: all rewritten ...
    assert sorted(p.name for p in out.glob("*.tar")) == ["00000.tar", "00001.tar", "00002.tar"]  # ... 00003 removed
    assert make_shards(data, out, per_shard=5, progress=False).reused == ["00000.tar", "00001.tar", "00002.tar"]
    entries = json.loads((data / "data_info.json").read_text())
    entries[4]["prompt"] = "an edited caption"  # item 4 is in shard 0
    (data / "data_info.json").write_text(json.dumps(entries))
    assert make_shards(data, out, per_shard=5, progress=False).reused == ["00001.tar", "00002.tar"]
