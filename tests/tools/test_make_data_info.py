"""tools/make_data_info.py: captions from sidecar files or a CSV/JSONL table, real oriented sizes, problems listed."""

import csv
import json

import pytest
from PIL import Image

from tests.commands import load_command

main = load_command("tools/make_data_info.py").main


def _image(path, size=(30, 20)):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size).save(path)


def test_caption_table_csv_and_jsonl(tmp_path, capsys):
    _image(tmp_path / "sub dir" / "a b.png", (30, 20))  # (w, h)
    _image(tmp_path / "c.jpg", (16, 48))
    _image(tmp_path / "uncaptioned.png")
    rows = [{"path": "sub dir/a b.png", "caption": 'a, quoted "thing"'}, {"path": "c.jpg", "caption": "tall"}]
    rows.append({"path": "gone.png", "caption": "not there"})
    with open(tmp_path / "captions.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, ["path", "caption"])
        writer.writeheader()
        writer.writerows(rows)
    assert main([str(tmp_path), "--captions", str(tmp_path / "captions.csv")]) == 0
    out = capsys.readouterr().out
    assert "2 items; 2 skipped" in out and "uncaptioned.png: no caption" in out and "gone.png: listed" in out
    items = json.loads((tmp_path / "data_info.json").read_text())
    assert items == [
        {"path": "c.jpg", "prompt": "tall", "height": 48, "width": 16, "ratio": 3.0},
        {"path": "sub dir/a b.png", "prompt": 'a, quoted "thing"', "height": 20, "width": 30, "ratio": 20 / 30},
    ]
    (tmp_path / "captions.jsonl").write_text("\n".join(json.dumps(r) for r in rows[:2]) + "\n")
    out_json = tmp_path / "other.json"
    assert (
        main([str(tmp_path), "--captions", str(tmp_path / "captions.jsonl"), "--out", str(out_json), "--strict"]) == 1
    )
    assert json.loads(out_json.read_text()) == items  # written, but --strict reports the uncaptioned image


def test_collisions_and_bad_tables_are_refused(tmp_path, capsys):
    for name in ("photo.jpg", "photo.png"):
        _image(tmp_path / name)
        (tmp_path / name).with_suffix(".txt").write_text("a photo")  # one sidecar serves both: still a collision
    assert main([str(tmp_path)]) == 1  # a clean error (tests/data/test_make_data_info_folders.py), not a traceback
    assert "'photo.jpg' and item 1 'photo.png'" in capsys.readouterr().err
    (tmp_path / "t.csv").write_text("file,text\nphoto.jpg,x\n")
    with pytest.raises(ValueError, match=r"t\.csv: row 1 needs 'path' and 'caption'"):
        main([str(tmp_path), "--captions", str(tmp_path / "t.csv")])


def test_a_non_utf8_sidecar_is_skipped_and_named(tmp_path, capsys):
    """Before: a bare UnicodeDecodeError naming no file, nothing written."""
    _image(tmp_path / "good.png")
    (tmp_path / "good.txt").write_bytes("\ufeffa caf\u00e9 on the beach".encode())  # a BOM must not reach the prompt
    _image(tmp_path / "latin.png")
    (tmp_path / "latin.txt").write_bytes("a caf\u00e9".encode("cp1252"))
    assert main([str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "1 items; 1 skipped" in out and "latin.png: caption latin.txt is not UTF-8" in out
    assert [item["prompt"] for item in json.loads((tmp_path / "data_info.json").read_text())] == [
        "a caf\u00e9 on the beach"
    ]


def test_every_extension_pillow_opens_is_used_and_the_rest_reported(tmp_path, capsys):
    """Before: a.png, download.jfif and scan.tga gave '1 items; 0 skipped'."""
    _image(tmp_path / "a.png")
    Image.new("RGB", (30, 20)).save(tmp_path / "download.jfif", format="JPEG")
    Image.new("RGB", (30, 20)).save(tmp_path / "scan.tga", format="TGA")
    (tmp_path / "phone.xyz").write_bytes(b"not an image format Pillow knows")
    for name in ("a", "download", "scan", "phone", "orphan"):
        (tmp_path / f"{name}.txt").write_text(f"caption of {name}")
    assert main([str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "3 items; 2 skipped" in out
    assert "phone.xyz: has a caption (phone.txt) but Pillow here cannot open .xyz files" in out
    assert "orphan.txt: a caption without an image" in out
    paths = [item["path"] for item in json.loads((tmp_path / "data_info.json").read_text())]
    assert paths == ["a.png", "download.jfif", "scan.tga"]


def test_caption_tables_with_a_bom_and_bad_jsonl_lines(tmp_path):
    _image(tmp_path / "a.png")
    (tmp_path / "excel.csv").write_bytes("path,caption\r\na.png,from excel\r\n".encode("utf-8-sig"))
    assert main([str(tmp_path), "--captions", str(tmp_path / "excel.csv")]) == 0
    assert json.loads((tmp_path / "data_info.json").read_text())[0]["prompt"] == "from excel"
    (tmp_path / "t.json").write_bytes(json.dumps([{"path": "a.png", "caption": "json"}]).encode("utf-8-sig"))
    assert main([str(tmp_path), "--captions", str(tmp_path / "t.json")]) == 0
    assert json.loads((tmp_path / "data_info.json").read_text())[0]["prompt"] == "json"
    (tmp_path / "t.jsonl").write_text('{"path": "a.png", "caption": "ok"}\n\n{"path": "a.png", "caption": oops}\n')
    with pytest.raises(ValueError, match=r"t\.jsonl line 3: not valid JSON"):
        main([str(tmp_path), "--captions", str(tmp_path / "t.jsonl")])
