"""diffusion/eval/clip_score.py against torchmetrics.multimodal.CLIPScore on the same tiny random CLIP folder."""

from pathlib import Path

import pytest
import torch
from transformers import CLIPModel, CLIPProcessor

from diffusion.eval.clip_score import CLIPScorer
from tests.eval.helpers import save_tiny_clip

PROMPTS = [
    "a large red circle at the top left on a gray background",
    "a small blue square at the bottom right on a white background",
    "a large green triangle in the center on a black background",
    "a small yellow cross at the top right on a gray background",
    "a large purple square at the bottom left on a beige background",
    "a small orange circle in the center on a black background",
]


class TensorFeatures(torch.nn.Module):
    """torchmetrics 1.9 expects ``get_*_features`` to return a tensor; transformers 5 returns a model output whose
    ``pooler_output`` holds the projected embedding. Only that return type is adapted."""

    def __init__(self, model: CLIPModel) -> None:
        super().__init__()
        self.clip, self.config = model, model.config

    def get_image_features(self, *args, **kwargs) -> torch.Tensor:
        return self.clip.get_image_features(*args, **kwargs).pooler_output

    def get_text_features(self, *args, **kwargs) -> torch.Tensor:
        return self.clip.get_text_features(*args, **kwargs).pooler_output


@pytest.fixture(scope="module")
def clip_folder(tmp_path_factory) -> Path:
    return save_tiny_clip(tmp_path_factory.mktemp("tiny_clip"))


def test_scores_match_torchmetrics_clip_score(clip_folder):
    from torchmetrics.multimodal import CLIPScore

    def load_independently():  # torchmetrics' own loading of the same folder
        return TensorFeatures(CLIPModel.from_pretrained(str(clip_folder))), CLIPProcessor.from_pretrained(
            str(clip_folder)
        )

    images = torch.randint(
        0, 256, (len(PROMPTS), 3, 32, 40), dtype=torch.uint8, generator=torch.Generator().manual_seed(1)
    )
    ours = CLIPScorer.from_folder(clip_folder)
    per_image = ours.scores(images, PROMPTS)
    assert per_image.shape == (len(PROMPTS),) and (per_image.abs() <= 100).all()
    assert (per_image > 0).any() and (per_image < 0).any()  # both sides of torchmetrics' clamp are exercised
    for image, prompt, score in zip(images, PROMPTS, per_image):
        metric = CLIPScore(model_name_or_path=load_independently)
        expected = metric(image[None], [prompt]).item()  # max(100 cos, 0) of this one pair
        assert max(score.item(), 0) == pytest.approx(expected, rel=1e-4, abs=1e-4)
    metric = CLIPScore(model_name_or_path=load_independently)
    metric.update(images[:3], PROMPTS[:3])
    metric.update(images[3:], PROMPTS[3:])
    assert ours.score(images, PROMPTS, batch_size=4, progress=False)["clip_score"] == pytest.approx(
        metric.compute().item(), rel=1e-4, abs=1e-4
    )


def test_a_pair_score_does_not_depend_on_its_batch(clip_folder):
    """Invariant: a pair's score depends on its own image and prompt only (batching and order do not matter)."""
    ours = CLIPScorer.from_folder(clip_folder)
    images = torch.randint(0, 256, (4, 3, 24, 24), dtype=torch.uint8, generator=torch.Generator().manual_seed(2))
    together = ours.scores(images, PROMPTS[:4])
    alone = torch.cat([ours.scores(images[i : i + 1], PROMPTS[i : i + 1]) for i in range(4)])
    torch.testing.assert_close(together, alone, rtol=1e-4, atol=1e-4)


def test_missing_folder_and_mismatched_inputs_are_clear(clip_folder, tmp_path):
    with pytest.raises(FileNotFoundError, match="nowhere.*huggingface-cli download openai/clip-vit-large-patch14"):
        CLIPScorer.from_folder(tmp_path / "nowhere")
    with pytest.raises(ValueError, match="2 images but 1 prompts"):
        CLIPScorer.from_folder(clip_folder).scores(torch.zeros(2, 3, 24, 24, dtype=torch.uint8), PROMPTS[:1])
