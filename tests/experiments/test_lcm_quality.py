"""tools/reproduce_lcm.py's table (diffusion/experiments/lcm_quality.py) with SWD beside FID, on a constructed case:
the pipelines are replaced by rows whose "generated" images are the real reference images themselves, those plus
noise and those blurred, so the order SWD must give is known: 0 for the real images, rising with the noise, above 0
for blur; both metrics' real-vs-real floor in the caption, per-level SWD in results.json, the mean in the table."""

import json
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from mmengine.config import Config
from PIL import Image

from diffusion.eval.swd import _blur
from diffusion.experiments import lcm_quality
from tests.eval.helpers import render_folder, tiny_attribute_net

NUM = 24  # images per row (and real reference images); the folder holds 2 x NUM for the floor


def read_folder(folder, num: int) -> torch.Tensor:
    """uint8 (num, 3, 32, 32): the first ``num`` PNGs of ``folder`` by name, read here with PIL alone."""
    paths = sorted(folder.glob("*.png"))[:num]
    return torch.from_numpy(np.stack([np.asarray(Image.open(p).convert("RGB")) for p in paths])).permute(0, 3, 1, 2)


def constructed(real: torch.Tensor, sampler: dict) -> torch.Tensor:
    """The reference images as they are, plus seeded Gaussian noise (``sigma``), or blurred twice."""
    kind, x = sampler["name"], real.float()
    if kind == "noise":
        x = x + torch.randn(x.shape, generator=torch.Generator().manual_seed(7)) * sampler["sigma"]
    elif kind == "blur":
        x = _blur(_blur(x))
    return x.round().clamp(0, 255).to(torch.uint8)


ROWS = [
    ("the real images themselves", "teacher", dict(name="real")),
    ("real + noise sigma 8", "teacher", dict(name="noise", sigma=8.0)),
    ("real + noise sigma 32", "student", dict(name="noise", sigma=32.0)),
    ("real, blurred", "student", dict(name="blur")),
]


@pytest.fixture(scope="module")
def table(tmp_path_factory):
    root = tmp_path_factory.mktemp("lcm_quality")
    render_folder(root / "data", 2 * NUM, max_offset=2)
    real = read_folder(root / "data", NUM)
    patch = pytest.MonkeyPatch()
    patch.setattr(lcm_quality, "ROWS", ROWS)
    fake_pipe = SimpleNamespace(model=SimpleNamespace(), resolution=(32, 32))
    patch.setattr(lcm_quality, "load_pipeline", lambda cfg, path, like=None: fake_pipe)
    patch.setattr(lcm_quality, "generate", lambda pipe, prompts, sampler, batch: (constructed(real, sampler), 1e-3, 1))
    cfg = Config(dict(data=dict(root=str(root / "data")), method=dict()))
    weights = tiny_attribute_net(tmp_path_factory)
    result = lcm_quality.reproduce(cfg, "t", "s", root / "out", num_images=NUM, batch_size=NUM, weights=weights)
    patch.undo()
    return dict(root=root, result=result, rows={r["setting"]: r for r in result["results"]})


def test_swd_orders_the_constructed_rows(table):
    rows = table["rows"]
    real, light, heavy, blur = (rows[label]["swd"] for label, _, _ in ROWS)
    assert set(real) == {"32", "16", "8", "avg"}
    assert all(v == 0 for v in real.values())  # the very reference images: exactly 0 at every level
    assert 0 < light["avg"] < heavy["avg"]
    assert 0 < light["32"] < heavy["32"] and blur["32"] > 0
    assert blur["avg"] > 0
    assert rows["the real images themselves"]["fid"] == pytest.approx(0, abs=1e-6)  # FID sees the same images


def test_the_floor_is_real_against_other_real_images(table):
    floor = table["result"]["floor"]
    assert floor["num"] == NUM and floor["swd"]["avg"] > 0 and floor["fid"] > 0
    assert floor["swd"]["avg"] < table["rows"]["real + noise sigma 32"]["swd"]["avg"]
    expected = f"Real against real ({NUM} other embedded-dataset images, the floor at this sample size): FID "
    assert expected + f"{floor['fid']:.2f}, SWD {floor['swd']['avg']:.2f}." in table["result"]["table"]


def test_table_and_json_carry_swd(table):
    out, result = table["root"] / "out", table["result"]
    text = (out / "table.md").read_text()
    assert text == result["table"]
    assert "| setting | FID ↓ | SWD ×1e3 ↓ | attributes all-correct ↑ |" in text
    assert "levels 32, 16, 8 px" in text
    for r in result["results"]:
        assert f"| {r['setting']} | {r['fid']:.2f} | {r['swd']['avg']:.2f} | " in text
    assert json.loads((out / "results.json").read_text()) == result["results"]


def test_a_row_without_swd_and_no_floor():
    row = dict(setting="old row", fid=1.0, sec_per_image=0.01, nfe=4)
    text = lcm_quality.format_table([row], "embedded", 8)
    assert "| old row | 1.00 | – | nan | nan | 10.0 ms | 4 |" in text and "Real against real" not in text
