"""tools/sweep_lcm.py: the w a w-embedding student is sampled at reaches ``PixArt.embed_conditions``, and the
tables and plot are written from a results dict."""

import torch

from diffusion.data import EMBEDDED_MAX_LENGTH
from diffusion.experiments.lcm_sweep import WithGuidance, format_tables, plot
from diffusion.registry import MODELS


def test_with_guidance_feeds_w_to_the_w_embedding():
    torch.manual_seed(0)
    model = MODELS.build(
        dict(type="PixArt_tiny", input_size=16, patch_size=2, in_channels=12, hidden_size=32, depth=1, num_heads=2,
             caption_channels=64, model_max_length=EMBEDDED_MAX_LENGTH, guidance_embedding=True)
    ).eval()  # fmt: skip
    for zero_initialised in (model.w_embedder.mlp[2].weight, model.final_layer.linear.weight):
        torch.nn.init.normal_(zero_initialised, std=0.02)  # as after training
    x, t = torch.randn(2, 12, 16, 16), torch.tensor([500, 100])
    y, mask = torch.randn(2, 1, EMBEDDED_MAX_LENGTH, 64), torch.ones(2, EMBEDDED_MAX_LENGTH, dtype=torch.long)
    info = {"img_hw": torch.tensor([[32.0, 32.0]] * 2), "aspect_ratio": torch.ones(2, 1)}
    wrapped = WithGuidance(model, 4.5)
    with torch.no_grad():
        out = wrapped(x, t, y, mask, info)
        expected = model(x, t, y, mask, dict(info, guidance=torch.full((2,), 4.5)))
        without = model(x, t, y, mask, info)
    torch.testing.assert_close(out, expected)
    assert not torch.allclose(out, without)
    assert wrapped.in_channels == 12 and wrapped.y_embedder is model.y_embedder  # what the pipeline reads


def test_tables_and_plot(tmp_path):
    point = dict(fid=10.0, attr_all=0.2, attr_mean=0.8)
    result = {
        "args": {"num_images": 8},
        "curves": [{"name": "w4.5", "label": "LCM w = 4.5", "points": [dict(step=0, **point), dict(step=5, **point)]}],
        "teacher": [
            dict(steps=s, cfg_scale=c, nfe=2 * s, sec_per_image=0.1, **point) for s in (4, 14, 20) for c in (1.0, 5.5)
        ],
    }
    table = format_tables(result)
    assert "| LCM w = 4.5 | 5 | 10.00 | 0.200 | 0.800 |" in table and "| 20 | 5.5 | 10.00 |" in table
    assert plot(result, tmp_path / "sweep.png").stat().st_size > 1000
