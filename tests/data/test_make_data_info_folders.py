"""tools/make_data_info.py on awkward folders (issue 19): symlinked sub-folders are followed (loops listed, not
walked forever), a folder or a looping / broken symlink named like an image is called what it is, and a feature-name
clash is a clean error naming both items, not a traceback."""

import json
import os

from PIL import Image

from tests.commands import load_command

main = load_command("tools/make_data_info.py").main


def _image(path, size=(30, 20)):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size).save(path)
    path.with_suffix(".txt").write_text(f"a photo {path.stem}")


def _items(folder):
    return [item["path"] for item in json.loads((folder / "data_info.json").read_text())]


def test_symlinked_sub_folders_are_followed_and_loops_listed(tmp_path, capsys):
    """Before: the images under a symlinked folder were silently left out (Path.rglob does not follow links)."""
    photos, elsewhere = tmp_path / "photos", tmp_path / "elsewhere"
    _image(photos / "a.png")
    _image(elsewhere / "trip" / "b.png")
    os.symlink(elsewhere / "trip", photos / "trip")
    os.symlink(".", photos / "trip_up")  # a loop: photos/trip_up -> photos
    assert main([str(photos)]) == 0
    assert _items(photos) == ["a.png", "trip/b.png"]
    out = capsys.readouterr().out
    assert "1 skipped" in out and "trip_up: a symlink to a folder already listed ('.'" in out


def test_a_folder_or_a_bad_symlink_named_like_an_image_is_called_what_it_is(tmp_path, capsys):
    """Before: 'has a caption (x.txt) but Pillow here cannot open .jpg files' for all three."""
    _image(tmp_path / "good.png")
    (tmp_path / "x.jpg").mkdir()
    (tmp_path / "x.txt").write_text("a folder named like a photo")
    os.symlink("loop.jpg", tmp_path / "loop.jpg")  # points at itself
    (tmp_path / "loop.txt").write_text("a looping link")
    os.symlink("gone.png", tmp_path / "broken.png")
    (tmp_path / "broken.txt").write_text("a broken link")
    assert main([str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "Pillow here cannot open" not in out
    assert "x.jpg: has a caption (x.txt) but x.jpg is a folder, not an image" in out
    assert "loop.jpg: a symlink loop" in out
    assert "broken.png: a broken symlink (to gone.png)" in out
    assert out.count("loop.jpg") == 1 and out.count("broken.png") == 1  # listed once, not again for the caption
    assert _items(tmp_path) == ["good.png"]


def test_a_listed_folder_in_a_caption_table_is_called_a_folder(tmp_path, capsys):
    _image(tmp_path / "good.png")
    (tmp_path / "dir.png").mkdir()
    (tmp_path / "captions.jsonl").write_text(
        json.dumps({"path": "good.png", "caption": "x"}) + "\n" + json.dumps({"path": "dir.png", "caption": "y"})
    )
    assert main([str(tmp_path), "--captions", str(tmp_path / "captions.jsonl")]) == 0
    assert "dir.png: a folder, not an image" in capsys.readouterr().out


def test_a_feature_name_clash_is_a_clean_error_naming_both(tmp_path, capsys):
    """Before: a raw ValueError traceback."""
    _image(tmp_path / "photo.jpg")
    _image(tmp_path / "photo.png")
    assert main([str(tmp_path)]) == 1
    err = capsys.readouterr().err
    assert "error:" in err and "'photo.jpg'" in err and "'photo.png'" in err and "Traceback" not in err
    assert not (tmp_path / "data_info.json").exists()
