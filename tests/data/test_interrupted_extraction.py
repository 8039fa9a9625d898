"""Extraction stopped midway (issue 19): the items written before a kill keep their source records, so later edits
of them are re-extracted (before: records were flushed every 30 s, the items became "unverified" forever and edits
were silently skipped); SIGTERM to tools/extract_features.py or tools/eval_fid.py sample says where it stopped and
that a rerun resumes (before: the process died without a word)."""

import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
from PIL import Image

from diffusion.data import PixelCodec, TextEncoder, extract_features
from diffusion.data.sources import read_sources
from tests.commands import load_command

REPO = Path(__file__).resolve().parents[2]
MAX_LENGTH = 8


def _folder(root: Path, num: int = 4) -> Path:
    entries = []
    for i in range(num):
        Image.fromarray(np.full((32, 32, 3), 40 * i, np.uint8)).save(root / f"{i}.png")
        entries.append({"path": f"{i}.png", "prompt": f"a red circle {i}", "height": 32, "width": 32})
    (root / "data_info.json").write_text(json.dumps(entries))
    return root


_COMMAND = "from tests.commands import load_command\nmain = load_command"  # + "(path).main"


def _python(*parts: str) -> subprocess.CompletedProcess:
    """Run the code ``parts`` in a fresh interpreter on this worktree (a kill there cannot take the test runner)."""
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    code = "\n".join(textwrap.dedent(part) for part in parts)
    return subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True, timeout=300)


def _kill_on_second_call(owner: str, name: str, sig: str) -> str:
    """Code that makes the second call of ``owner.name`` send ``sig`` to its own process first."""
    return f"""
        import os, signal
        _original, _calls = {owner}.{name}, []
        def _wrapper(*args, **kwargs):
            _calls.append(1)
            if len(_calls) == 2:
                os.kill(os.getpid(), signal.{sig})
            return _original(*args, **kwargs)
        {owner}.{name} = _wrapper
    """


def test_items_written_before_a_kill_keep_their_records(tmp_path, tiny_text_encoder_dir):
    folder = _folder(tmp_path)
    setup = "from diffusion.data import PixelCodec, TextEncoder, extract_features"
    code = f"""
        encoder = TextEncoder.from_pretrained({str(tiny_text_encoder_dir)!r}, max_length={MAX_LENGTH})
        extract_features({str(folder)!r}, encoder, PixelCodec(), 32, vae_batch_size=2, progress=False, workers=1)
    """
    result = _python(setup, _kill_on_second_call("PixelCodec", "encode", "SIGKILL"), code)
    assert result.returncode == -signal.SIGKILL, result.stderr
    latents = folder / "vae_features_32"
    assert sorted(p.name for p in latents.glob("*.npy")) == ["0.npy", "1.npy"]  # the first batch, then the kill
    assert sorted(read_sources(latents)) == ["0", "1"]  # ... recorded with it
    assert sorted(read_sources(folder / "caption_features")) == ["0", "1", "2", "3"]

    Image.fromarray(np.full((32, 32, 3), 7, np.uint8)).save(folder / "1.png")  # replaced after the stop
    encoder = TextEncoder.from_pretrained(tiny_text_encoder_dir, max_length=MAX_LENGTH)
    report = extract_features(folder, encoder, PixelCodec(), 32, vae_batch_size=2, progress=False, workers=1)
    assert (report.latents, report.changed, report.unverified) == (3, 1, 0), report.summary()


def test_a_caption_edited_after_a_kill_during_captions_is_redone(tmp_path, tiny_text_encoder_dir):
    folder = _folder(tmp_path)
    setup = "from diffusion.data import PixelCodec, TextEncoder, extract_features"
    code = f"""
        encoder = TextEncoder.from_pretrained({str(tiny_text_encoder_dir)!r}, max_length={MAX_LENGTH})
        extract_features({str(folder)!r}, encoder, PixelCodec(), 32, text_batch_size=2, progress=False)
    """
    assert _python(setup, _kill_on_second_call("TextEncoder", "encode", "SIGKILL"), code).returncode == -signal.SIGKILL
    assert sorted(read_sources(folder / "caption_features")) == ["0", "1"]
    entries = json.loads((folder / "data_info.json").read_text())
    entries[0]["prompt"] = "an edited caption"
    (folder / "data_info.json").write_text(json.dumps(entries))
    encoder = TextEncoder.from_pretrained(tiny_text_encoder_dir, max_length=MAX_LENGTH)
    report = extract_features(folder, encoder, PixelCodec(), 32, text_batch_size=2, progress=False)
    assert (report.captions, report.changed, report.unverified) == (3, 1, 0), report.summary()


def test_sigterm_to_extract_features_says_where_it_stopped(tmp_path, tiny_text_encoder_dir):
    folder = _folder(tmp_path)
    args = ["--data-root", str(folder), "--text-encoder", str(tiny_text_encoder_dir), "--codec", "pixel"]
    args += ["--resolution", "32", "--max-length", str(MAX_LENGTH), "--device", "cpu", "--workers", "1"]
    args += ["--vae-batch-size", "1"]
    setup = f"from diffusion.data import PixelCodec\n{_COMMAND}('tools/extract_features.py').main"
    run = f"raise SystemExit(main({args!r}))"
    result = _python(setup, _kill_on_second_call("PixelCodec", "encode", "SIGTERM"), run)
    assert result.returncode == 128 + signal.SIGTERM, (result.returncode, result.stderr)
    assert "stopped by SIGTERM in the latents pass after 2 of 4 images" in result.stderr, result.stderr
    assert "rerun the same command to resume" in result.stderr
    assert len(list((folder / "vae_features_32").glob("*.npy"))) == 2  # the image being encoded was finished
    main = load_command("tools/extract_features.py").main

    assert main(args) == 0
    assert len(read_sources(folder / "vae_features_32")) == 4


def test_sigterm_to_eval_fid_sample_says_where_it_stopped(tmp_path):
    from diffusion.data.embedded import VALIDATION_PROMPTS
    from tests.eval.helpers import tiny_checkpoint

    config, weights = tiny_checkpoint(tmp_path)
    (tmp_path / "prompts.txt").write_text("\n".join(VALIDATION_PROMPTS[:3]) + "\n")
    out = tmp_path / "samples"
    args = [
        "sample",
        "--config",
        str(config),
        "--checkpoint",
        str(weights),
        "--prompts",
        str(tmp_path / "prompts.txt"),
    ]
    args += ["--out", str(out), "--sampler", "lcm", "--steps", "1", "--batch-size", "1", "--device", "cpu"]
    setup = f"import diffusion.eval.sampling as sampling\n{_COMMAND}('tools/eval_fid.py').main"
    run = f"raise SystemExit(main({args!r}))"
    result = _python(setup, _kill_on_second_call("sampling", "_save_atomic", "SIGTERM"), run)
    assert result.returncode == 128 + signal.SIGTERM, (result.returncode, result.stderr)
    assert "stopped by SIGTERM" in result.stderr and "1 of 3 images" in result.stderr, result.stderr
    assert "rerun the same command to resume" in result.stderr
    main = load_command("tools/eval_fid.py").main

    assert main(args) == 0
    assert sorted(p.name for p in out.glob("*.png")) == ["00000.png", "00001.png", "00002.png"]
