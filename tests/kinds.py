"""Tiny networks of every kind the tools serve (issue 22.5), made from constructed weights in about a second: a
teacher, the PixArt-delta students (a full LCM student, an LCM-LoRA student saved as the trainer saves it: the
adapters only, a w-embedding student) and a ControlNet on the teacher, each with its config, plus the reference
networks built independently of ``diffusion.build`` (the LoRA merged by hand, the ControlNet wrapped by hand)."""

from pathlib import Path

import torch
from mmengine.config import Config
from safetensors.torch import load_file, save_file

from diffusion.data import ensure_tiny_text_encoder
from diffusion.methods.lcm_distillation import add_lora
from diffusion.model import students
from diffusion.model.controlnet import PixArtControlNet
from diffusion.registry import MODELS
from tests.model.helpers import randomize

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
KINDS = ("full", "lora", "wembed", "controlnet")
STUDENTS = ("full", "lora", "wembed")
PROMPT = "a large red circle at the top left on a gray background"
RANK, ALPHA, W = 4, 8.0, 3.0
MODEL = "model = dict(hidden_size=32, depth=2, num_heads=2, class_dropout_prob=0.0)\n"


def _save(state: dict, path: Path) -> str:
    save_file({k: v.contiguous() for k, v in state.items()}, str(path))
    return str(path)


def make_kinds(root: Path) -> dict:
    """Files under ``root``: ``kinds`` = ``{kind: dict(config, checkpoint)}`` for every kind of :data:`KINDS` (the
    students' configs name the teacher as ``weights.teacher``, the ControlNet's as ``weights.base``), ``teacher`` (its
    file) and ``teacher_config``."""
    te = ensure_tiny_text_encoder(root / "t5")
    bases = [f"{CONFIGS}/_base_/{p}.py" for p in ("models/tiny", "datasets/embedded_32", "schedules/tiny_cpu")]
    common = f"{MODEL}text_encoder = dict(path='{te}')\n"
    (root / "teacher.py").write_text(f"_base_ = {[*bases, f'{CONFIGS}/_base_/methods/diffusion.py']!r}\n{common}")
    teacher_cfg = Config.fromfile(str(root / "teacher.py"))
    teacher = randomize(MODELS.build(dict(teacher_cfg.model)), std=0.05, seed=0)
    files = dict(teacher=_save(teacher.state_dict(), root / "teacher.safetensors"))
    (root / "full.py").write_text(
        f"_base_ = {[*bases, f'{CONFIGS}/_base_/methods/lcm.py']!r}\n{common}"
        f"weights = dict(teacher='{files['teacher']}')\n"
    )
    (root / "lora.py").write_text(
        f"_base_ = ['{root / 'full.py'}']\nmethod = dict(lora=dict(_delete_=True, rank={RANK}, alpha={ALPHA}))\n"
    )
    (root / "wembed.py").write_text(
        f"_base_ = ['{root / 'full.py'}']\nmodel = dict(guidance_embedding=True)\n"
        f"method = dict(guidance_embedding=True, w={W}, w_range=(2.0, 6.0))\n"
    )
    (root / "controlnet.py").write_text(
        f"_base_ = ['{root / 'teacher.py'}']\nweights = dict(base='{files['teacher']}')\n"
        "controlnet = dict(copy_blocks=1)\n"
    )
    full = randomize(MODELS.build(dict(teacher_cfg.model)), std=0.05, seed=1)
    lora = MODELS.build(dict(teacher_cfg.model))
    lora.load_state_dict(teacher.state_dict())
    add_lora(lora, RANK, ALPHA, ("qkv", "fc1", "fc2"))
    randomize_lora(lora)
    wembed = randomize(MODELS.build(dict(teacher_cfg.model, guidance_embedding=True)), std=0.05, seed=2)
    controlnet = PixArtControlNet(teacher, copy_blocks=1)
    randomize(controlnet.controlnet, std=0.05, seed=3)
    checkpoints = dict(
        full=_save(full.state_dict(), root / "full.safetensors"),
        lora=_save({k: v for k, v in lora.state_dict().items() if "lora_" in k}, root / "lora.safetensors"),
        wembed=_save(wembed.state_dict(), root / "wembed.safetensors"),
        controlnet=_save(controlnet.trainable_state_dict(), root / "controlnet.safetensors"),
    )
    kinds = {kind: dict(config=str(root / f"{kind}.py"), checkpoint=checkpoints[kind]) for kind in KINDS}
    return dict(kinds=kinds, teacher=files["teacher"], teacher_config=str(root / "teacher.py"), root=root)


def randomize_lora(model: torch.nn.Module) -> None:
    """Non-zero adapters (B starts at zero), so that the LoRA changes the samples."""
    g = torch.Generator().manual_seed(7)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_" in name:
                p.copy_(torch.randn(p.shape, generator=g) * 0.1)


def reference_network(made: dict, kind: str) -> torch.nn.Module:
    """The network of ``kind``, built without ``diffusion.build``: the weights loaded into the registry's model by
    hand, the LoRA merged with ``students.merge_lora``, the ControlNet wrapped around the teacher by hand."""
    cfg = Config.fromfile(made["kinds"][kind]["config"])
    teacher = load_file(made["teacher"])
    state = load_file(made["kinds"][kind]["checkpoint"])
    if kind == "lora":
        state = students.merge_lora(state, RANK, ALPHA / RANK, teacher)
    if kind == "controlnet":
        base = MODELS.build(dict(cfg.model))
        base.load_state_dict(teacher)
        model = PixArtControlNet(base, copy_blocks=1)
        model.controlnet.load_state_dict({k[len("controlnet.") :]: v for k, v in state.items()})
        return model.eval()
    model = MODELS.build(dict(cfg.model))
    model.load_state_dict(state)
    return model.eval()


def teacher_network(made: dict) -> torch.nn.Module:
    model = MODELS.build(dict(Config.fromfile(made["teacher_config"]).model))
    model.load_state_dict(load_file(made["teacher"]))
    return model.eval()
