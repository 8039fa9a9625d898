"""diffusion/eval/inception.py: the standard FID Inception against pytorch-fid's own model on the same random weights
file (features and FID within 1e-3 relative), and clear errors for missing, corrupt or wrong-architecture weights."""

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from pytorch_fid import inception as pfid_inception
from torchvision.models.inception import Inception3

from diffusion.eval import build_feature_extractor, fid_between, folder_features
from diffusion.eval.inception import FID_WEIGHTS_NAME, fid_inception_v3


@pytest.fixture(scope="module")
def fid_weights(tmp_path_factory) -> Path:
    """Random FID-Inception weights whose BatchNorm statistics are calibrated on random images (so activations stay
    of order one through the 94 layers instead of vanishing), saved like pytorch-fid's file: a flat state dict."""
    torch.manual_seed(0)
    net = fid_inception_v3()
    for m in net.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.reset_running_stats()
            m.momentum = None  # cumulative average over the calibration pass
    net.train()
    with torch.no_grad():
        net(torch.rand(2, 3, 299, 299) * 2 - 1)
    path = tmp_path_factory.mktemp("fid_inception") / FID_WEIGHTS_NAME
    torch.save(net.state_dict(), path)
    return path


def _folder(path: Path, num: int, size: tuple[int, int], seed: int) -> Path:
    """``num`` random-texture RGB PNGs (a smooth colour field plus noise) of ``size`` (W, H)."""
    path.mkdir(parents=True)
    rng = np.random.default_rng(seed)
    for i in range(num):
        base = rng.uniform(0, 255, size=(1, 1, 3)) + rng.normal(0, 60, size=(size[1], size[0], 3))
        Image.fromarray(np.clip(base, 0, 255).astype(np.uint8)).save(path / f"{i:05d}.png")
    return path


class PytorchFidPool3(torch.nn.Module):
    """pytorch-fid's own InceptionV3 (pool3 block, its resize and scaling), as torchmetrics' feature network; keeps
    the features it computed so they can be compared with ours."""

    num_features = 2048

    def __init__(self, weights: Path) -> None:
        super().__init__()
        self.net = pfid_inception.InceptionV3([pfid_inception.InceptionV3.BLOCK_INDEX_BY_DIM[2048]]).eval()
        self.seen: list[torch.Tensor] = []

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            features = self.net(images)[0].flatten(1)  # (N, 2048)
        self.seen.append(features)
        return features


def _read(folder: Path) -> torch.Tensor:
    """Float (N,3,H,W) in [0, 1] as pytorch-fid reads files (PIL, RGB, ToTensor)."""
    arrays = [np.asarray(Image.open(p).convert("RGB"), np.float32) / 255 for p in sorted(folder.glob("*.png"))]
    return torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2)


def test_features_and_fid_match_pytorch_fid_and_torchmetrics(fid_weights, tmp_path, monkeypatch):
    """Features: ours vs pytorch-fid's network with its weights loaded from the same file. FID: ours vs torchmetrics'
    FrechetInceptionDistance over pytorch-fid's features (3 + 3 images: rank-deficient covariances, on purpose)."""
    from torchmetrics.image.fid import FrechetInceptionDistance

    monkeypatch.setattr(pfid_inception, "load_state_dict_from_url", lambda *a, **k: torch.load(fid_weights))
    theirs = PytorchFidPool3(fid_weights)
    metric = FrechetInceptionDistance(feature=theirs, normalize=True)
    a = _folder(tmp_path / "a", 3, (40, 32), seed=0)  # not square, not 299: the resize conventions must agree
    b = _folder(tmp_path / "b", 3, (40, 32), seed=1)
    metric.update(_read(a), real=True)
    metric.update(_read(b), real=False)
    fid_torchmetrics = metric.compute().item()
    ours = build_feature_extractor("inception", fid_weights)
    for folder, features_theirs in zip((a, b), theirs.seen):
        features = folder_features(ours, folder, batch_size=3, progress=False)[0]
        assert features.shape == (3, 2048) and features.std() > 1e-3  # healthy, distinct features
        rel = np.abs(features - features_theirs.double().numpy()).max() / features_theirs.abs().max().item()
        assert rel < 1e-3, f"features of {folder.name} differ by {rel:.2e} relative"
    fid_ours, _ = fid_between(a, b, ours, batch_size=3, progress=False)
    assert fid_ours > 0 and fid_ours == pytest.approx(fid_torchmetrics, rel=1e-3)


def test_mixed_image_sizes_are_resized_inside_the_network(fid_weights, tmp_path):
    folder = _folder(tmp_path / "mixed", 2, (40, 32), seed=2)
    Image.open(folder / "00001.png").resize((48, 48)).save(folder / "00001.png")
    extractor = build_feature_extractor("inception", fid_weights)
    features, report = folder_features(extractor, folder, batch_size=8, progress=False)
    assert features.shape == (2, 2048) and report.read == 2
    one = extractor(torch.from_numpy(np.array(Image.open(folder / "00001.png"))).permute(2, 0, 1)[None])
    np.testing.assert_allclose(features[1], one[0].double().numpy(), rtol=1e-5, atol=1e-6)


def test_missing_weights_name_the_file_and_where_to_get_it(tmp_path):
    with pytest.raises(FileNotFoundError, match=rf"nowhere\.pth.*{FID_WEIGHTS_NAME}.*github"):
        build_feature_extractor("inception", tmp_path / "nowhere.pth")
    with pytest.raises(FileNotFoundError, match="not found: None"):
        build_feature_extractor("inception")
    with pytest.raises(KeyError, match="unknown feature extractor"):
        build_feature_extractor("clip")


def test_corrupt_weights_file_is_named(tmp_path):
    (tmp_path / "bad.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="bad.pth"):
        build_feature_extractor("inception", tmp_path / "bad.pth")


def test_wrong_architecture_is_refused(fid_weights, tmp_path):
    torchvision_state = Inception3(num_classes=1000, aux_logits=True, init_weights=False).state_dict()
    torch.save(torchvision_state, tmp_path / "tv.pth")
    with pytest.raises(ValueError, match="tv.pth is not the FID Inception.*inception-torchvision"):
        build_feature_extractor("inception", tmp_path / "tv.pth")
    with pytest.raises(ValueError, match="is not torchvision's.*--features inception"):
        build_feature_extractor("inception-torchvision", fid_weights)
    truncated = {k: v for k, v in torch.load(fid_weights).items() if not k.startswith("Mixed_7c.")}
    torch.save(truncated, tmp_path / "truncated.pth")
    with pytest.raises(ValueError, match="missing keys.*Mixed_7c"):
        build_feature_extractor("inception", tmp_path / "truncated.pth")


def test_torchvision_variant_is_labelled_apart(tmp_path):
    torch.save(Inception3(num_classes=1000, aux_logits=True, init_weights=False).state_dict(), tmp_path / "tv.pth")
    extractor = build_feature_extractor("inception-torchvision", tmp_path / "tv.pth")
    assert extractor.name == "inception-torchvision"  # its statistics files never pass as standard FID ones
    features = extractor(torch.randint(0, 256, (2, 3, 32, 32), dtype=torch.uint8))
    assert features.shape == (2, 2048) and torch.isfinite(features).all()
