"""tools/make_data_info.py: captions from sidecar files or a CSV/JSONL table, real oriented sizes, problems listed."""

import csv
import json

import pytest
from PIL import Image

from tools.make_data_info import main


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


def test_collisions_and_bad_tables_are_refused(tmp_path):
    for name in ("photo.jpg", "photo.png"):
        _image(tmp_path / name)
        (tmp_path / name).with_suffix(".txt").write_text("a photo")  # one sidecar serves both: still a collision
    with pytest.raises(ValueError, match=r"'photo\.jpg' and item 1 'photo\.png'"):
        main([str(tmp_path)])
    (tmp_path / "t.csv").write_text("file,text\nphoto.jpg,x\n")
    with pytest.raises(ValueError, match=r"t\.csv: row 1 needs 'path' and 'caption'"):
        main([str(tmp_path), "--captions", str(tmp_path / "t.csv")])
