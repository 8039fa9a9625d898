"""Peak memory of training and inference: PixArt-delta Table 1 / §3.3 (training) and §4 (8-bit inference in 8 GB).

Rows, each measured in a fresh subprocess so that one row's allocations never count towards another's:
  lcm-*       one LCM distillation step (``LCMDistillation``, the LCM config's PixArtMS-XL/2 with gradient
              checkpointing) at 1024², batch 12: fp32 student + AdamW, frozen teacher and EMA target kept in fp32
              (as the official code and our trainer do), or in bf16 / fp16 (the lean setting); fp16 runs with a
              GradScaler as on the paper's V100s;
  teacher-*   one PixArt-alpha diffusion-loss step of the same network (what the teacher costs to fine-tune);
  controlnet  ControlNet-Transformer training (N = 13 trainable copies, frozen base in bf16) at the same size;
  infer-*     LCM 4-step inference of one 1024² image with T5-XXL in bf16 or int8 (``--text-encoder-8bit``), the
              transformer in bf16 and the SD VAE; ``lean``: T5 offloaded after encoding, VAE decoded in tiles.
Each row is split into weights / gradients / optimizer state (bytes of the tensors) and the rest of the peak
(activations, workspaces, allocator slack). On a GPU the peak is ``torch.cuda.max_memory_allocated`` at the real
sizes; on a CPU it is the process's resident memory, sampled every 2 ms, above what it held before building, at the
reduced size of ``diffusion.bench.SIZES['cpu']`` (it says so).

    python tools/benchmark_memory.py                          # CPU, reduced size
    python tools/benchmark_memory.py --device cuda            # GPU, the paper's sizes
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import threading
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from diffusion.bench import PROMPTS, get_size, machine, random_pixart, random_t5, random_vae  # noqa: E402

GB = 1024**3
HALF = {"bf16": torch.bfloat16, "fp16": torch.float16}
# row -> (kind, autocast dtype, dtype of the frozen copies)
ROWS = {
    "lcm-fp16-fp32copies": ("lcm", "fp16", "fp32"),
    "lcm-fp16": ("lcm", "fp16", "fp16"),
    "lcm-bf16": ("lcm", "bf16", "bf16"),
    "teacher-fp16": ("teacher", "fp16", None),
    "teacher-bf16": ("teacher", "bf16", None),
    "controlnet-bf16": ("controlnet", "bf16", "bf16"),
    "infer-bf16": ("infer", "bf16", "bf16"),
    "infer-int8-lean": ("infer", "bf16", "int8"),
}
PAPER = {
    "lcm": "~32 GB / V100 (Table 1); < 24 GB (Fig. 8); target ≤ 20 GB",
    "teacher": "—",
    "controlnet": "16 × V100 32 GB (§4)",
    "infer": "within 8 GB with 8-bit T5 (§4); target < 7.5 GB",
}
# Per size: training batch and ControlNet depth N; (full = the paper's 12 images per GPU and N = 13).
BATCH = {"full": 12, "cpu": 2, "tiny": 2}


def tensor_bytes(t: torch.Tensor) -> int:
    """Bytes a tensor holds, looking inside tensor subclasses (torchao's int8 weights: data + scales)."""
    if hasattr(t, "__tensor_flatten__"):
        names, _ = t.__tensor_flatten__()
        return sum(tensor_bytes(getattr(t, n)) for n in names)
    return t.numel() * t.element_size()


def module_bytes(*modules: torch.nn.Module) -> int:
    return sum(tensor_bytes(t) for m in modules for t in [*m.parameters(), *m.buffers()])


class Peak:
    """Peak memory of the enclosed code above a baseline: CUDA allocator, or resident memory sampled on a thread."""

    def __init__(self, device: str):
        self.cuda = device.startswith("cuda")

    def now(self) -> int:
        if self.cuda:
            return torch.cuda.memory_allocated()
        import psutil

        return psutil.Process().memory_info().rss

    def __enter__(self):
        self.peak, self.running = self.now(), True
        if self.cuda:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        else:
            self.thread = threading.Thread(target=self._sample, daemon=True)
            self.thread.start()
        return self

    def _sample(self):
        while self.running:
            self.peak = max(self.peak, self.now())
            time.sleep(0.002)

    def __exit__(self, *exc):
        if self.cuda:
            torch.cuda.synchronize()
            self.peak = torch.cuda.max_memory_allocated()
        else:
            self.running = False
            self.thread.join()
            self.peak = max(self.peak, self.now())


def fake_batch(size, batch: int, device: str) -> dict:
    """Latents (B, 4, H/8, W/8), 120-token captions with 20 valid, micro-conditions: what the trainer feeds."""
    g = torch.Generator().manual_seed(0)
    side, channels = size.resolution // 8, size.model.get("caption_channels", 4096)
    mask = torch.zeros(batch, 120, dtype=torch.long)
    mask[:, :20] = 1
    hw = torch.full((batch, 2), float(size.resolution))
    batch = dict(
        x0=torch.randn(batch, 4, side, side, generator=g),
        y=torch.randn(batch, 1, 120, channels, generator=g),
        y_mask=mask,
        data_info={"img_hw": hw, "aspect_ratio": torch.ones(batch, 1)},
    )
    return {
        k: v.to(device) if torch.is_tensor(v) else {a: b.to(device) for a, b in v.items()} for k, v in batch.items()
    }


def train_row(args, kind: str, amp: str, frozen: str | None) -> dict:
    """Two optimizer steps as ``Trainer.train_step`` takes them; the peak covers both (the second holds the Adam
    state the first created)."""
    from diffusion.methods import DiffusionLoss, LCMDistillation

    device, size = args.device, get_size(args.size)
    base = Peak(device).now()
    model = random_pixart(size, grad_checkpointing=True).to(device).train()
    frozen_modules = []
    if kind == "controlnet":  # N = 13 trainable copies (at most depth - 1 in a reduced model), frozen base
        from diffusion.model.controlnet import wrap_controlnet

        model = wrap_controlnet(model, "transformer", min(13, len(model.blocks) - 1)).to(device).train()
        if frozen != "fp32":
            model.base_model.to(HALF[frozen])  # the frozen base in half precision, the copies in fp32
        method = DiffusionLoss(model)
    elif kind == "lcm":
        method = LCMDistillation(model, w=4.5).to(device)
        if frozen != "fp32":
            method.teacher.to(HALF[frozen])
            method.target.to(HALF[frozen])
        frozen_modules = [method.teacher, method.target]
    else:
        method = DiffusionLoss(model)
    params = [p for p in model.parameters() if p.requires_grad]
    fused = device.startswith("cuda")  # one kernel for all parameters, no per-parameter temporaries
    optimizer = torch.optim.AdamW(params, lr=2e-5, weight_decay=0.0, eps=1e-10, fused=fused or None)
    scaler = torch.amp.GradScaler(torch.device(device).type, enabled=amp == "fp16")
    batch = fake_batch(size, BATCH[args.size], device)
    if kind == "controlnet":
        batch["c"] = torch.randn_like(batch["x0"])  # the control latent (HED map through the VAE)
    weights = module_bytes(model, *frozen_modules)
    with Peak(device) as peak:
        for _ in range(2):
            with torch.autocast(torch.device(device).type, dtype=HALF[amp]):
                loss, _ = method(model, batch)
            scaler.scale(loss).backward()
            scaler.unscale_(optimizer)
            torch.nn.utils.clip_grad_norm_(params, 0.01)
            scaler.step(optimizer)
            scaler.update()
            grads = sum(tensor_bytes(p.grad) for p in params if p.grad is not None)
            optimizer.zero_grad(set_to_none=True)
            ema_step(method, model)
    state = sum(tensor_bytes(v) for s in optimizer.state.values() for v in s.values() if torch.is_tensor(v))
    return dict(weights=weights, grads=grads, optimizer=state, peak=peak.peak - base, loss=float(loss))


def ema_step(method, model) -> None:
    """The target EMA; with a half-precision target the student is cast first (``_foreach_lerp_`` needs one dtype).
    A bf16 target rounds away updates below 2^-8 of a weight: the memory row shows the cost, not a recommendation."""
    target = getattr(method, "_target", None)
    if target is None:
        return
    t = [p for p in target[0].parameters()]
    if t[0].dtype == torch.float32:
        method.after_optimizer_step(model)
        return
    with torch.no_grad():
        for tp, sp in zip(t, model.parameters()):
            tp.lerp_(sp.detach().to(tp.dtype), 1.0 - method.ema_decay)


def infer_row(args, t5_dtype: str) -> dict:
    """One LCM 4-step image at ``size.resolution``; int8: T5 weights in int8, T5 offloaded, VAE tiled."""
    from diffusion.data import AutoencoderKLCodec
    from diffusion.pipeline import Pipeline

    device, size = args.device, get_size(args.size)
    base = Peak(device).now()
    lean = t5_dtype == "int8"
    text_encoder = random_t5(size, "cpu" if lean else device, torch.bfloat16)
    if lean:
        text_encoder.quantize_8bit()
    model = random_pixart(size).to(device, torch.bfloat16).eval().requires_grad_(False)
    codec = AutoencoderKLCodec(random_vae(size, device, torch.bfloat16), dtype=torch.bfloat16)
    if lean:
        codec.set_lean_decode(True)
    pipe = Pipeline(model, text_encoder, codec, size.resolution, offload_text_encoder=lean)
    weights = module_bytes(text_encoder.model, model, codec)
    if device.startswith("cuda"):
        torch.cuda.empty_cache()
    with Peak(device) as peak, torch.no_grad():
        pipe(list(PROMPTS[:1]), seed=0, name="lcm", steps=4)
    return dict(weights=weights, grads=0, optimizer=0, peak=peak.peak - base)


def child(args) -> dict:
    kind, amp, frozen = ROWS[args.child]
    if kind == "infer":
        return infer_row(args, frozen)
    return train_row(args, kind, amp, frozen)


def run_rows(args) -> dict:
    """Each row in its own process; a row that fails records why (e.g. out of memory) instead of a number."""
    results = {}
    for row in args.rows:
        cmd = [sys.executable, __file__, "--child", row, "--size", args.size, "--device", args.device]
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=args.row_timeout)
        except subprocess.TimeoutExpired:
            results[row] = {"error": f"ran past {args.row_timeout:g} s"}
            print(f"{row}: {results[row]}", file=sys.stderr, flush=True)
            continue
        lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
        if proc.returncode == 0 and lines:
            results[row] = json.loads(lines[-1])
        else:
            why = (proc.stderr.strip().splitlines() or ["no output"])[-1]
            results[row] = {"error": why[:200]}
        print(f"{row}: {results[row]}", file=sys.stderr, flush=True)
    return dict(machine=machine(), size=get_size(args.size).describe(), batch=BATCH[args.size], rows=results)


def markdown(result: dict) -> str:
    cpu = "CPU" in result["machine"]
    peak_name = "peak RSS above start" if cpu else "peak allocated"
    lines = [
        f"Machine: {result['machine']}; {result['size']}; training batch {result['batch']}, inference batch 1"
        + ("; CPU: reduced size, resident memory (not the paper's GPU numbers)" if cpu else ""),
        "",
        f"| row | weights (GB) | grads (GB) | optimizer (GB) | activations, rest (GB) | {peak_name} (GB) | paper |",
        "|---|---|---|---|---|---|---|",
    ]
    for row, r in result["rows"].items():
        paper = PAPER[ROWS[row][0]]
        if "error" in r:
            lines.append(f"| {row} | skipped: {r['error']} | | | | | {paper} |")
            continue
        rest = r["peak"] - r["weights"] - r["grads"] - r["optimizer"]
        cells = [r["weights"], r["grads"], r["optimizer"], rest, r["peak"]]
        lines.append(f"| {row} | " + " | ".join(f"{c / GB:.2f}" for c in cells) + f" | {paper} |")
    return "\n".join(lines)


def parse_args(argv: list[str] | None = None):
    cuda = torch.cuda.is_available()
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda" if cuda else "cpu")
    parser.add_argument("--size", default=None, choices=sorted(BATCH), help="default: full on GPU, else cpu")
    parser.add_argument("--rows", nargs="+", default=list(ROWS), choices=list(ROWS))
    parser.add_argument("--row-timeout", type=float, default=600)
    parser.add_argument("--json", default=None, help="also write the results here")
    parser.add_argument("--child", default=None, choices=list(ROWS), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    args.size = args.size or ("full" if args.device.startswith("cuda") else "cpu")
    return args


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    if args.child:
        row = child(args)
        print(json.dumps(row), flush=True)
        return row
    result = run_rows(args)
    print(markdown(result))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1))
    return result


if __name__ == "__main__":
    main()
