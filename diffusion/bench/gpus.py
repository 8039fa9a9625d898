"""GPU specifications for the memory planner and the roofline (vendor datasheet figures, nothing measured here).

``memory_gib``: the card's memory as sold (HBM / GDDR capacity; the "80 GB" parts carry 80 GiB of HBM).
``dense_tflops``: dense bf16 / fp16 Tensor Core throughput (datasheets quote "with sparsity" figures for A100 and
later, twice the dense one; V100 and T4 have no bf16, their fp16 figure is given). ``bandwidth_gbs``: memory
bandwidth, GB/s.

| name | source (datasheet) | figures used |
|---|---|---|
| V100-32GB | NVIDIA Tesla V100 GPU Accelerator datasheet, SXM2 | 32 GB HBM2, 900 GB/s, Tensor 125 TFLOPS |
| A100-40GB | NVIDIA A100 Tensor Core GPU datasheet, 40GB SXM | 40 GB HBM2, 1,555 GB/s, BF16 312 (624*) TFLOPS |
| A100-80GB | NVIDIA A100 Tensor Core GPU datasheet, 80GB SXM | 80 GB HBM2e, 2,039 GB/s, BF16 312 (624*) TFLOPS |
| H100-80GB | NVIDIA H100 Tensor Core GPU datasheet, H100 SXM | 80 GB HBM3, 3.35 TB/s, BF16 1,979* TFLOPS |
| H200 | NVIDIA H200 Tensor Core GPU datasheet, H200 SXM | 141 GB HBM3e, 4.8 TB/s, BF16 1,979* TFLOPS |
| T4 | NVIDIA T4 Tensor Core GPU datasheet | 16 GB GDDR6, 320 GB/s, FP16/FP32 mixed 65 TFLOPS |
| RTX4090-24GB | NVIDIA Ada GPU architecture whitepaper | 24 GB GDDR6X, 1,008 GB/s, FP16 (FP32 acc.) 165.2 TFLOPS |
| L4-24GB | NVIDIA L4 Tensor Core GPU datasheet | 24 GB GDDR6, 300 GB/s, BF16 242* TFLOPS |

(* with 2:4 sparsity; the dense figure used is half of it.)
"""

from __future__ import annotations

from dataclasses import dataclass

GIB = 1024**3


@dataclass(frozen=True)
class GPU:
    name: str
    memory_gib: float
    dense_tflops: float
    bandwidth_gbs: float
    bf16: bool = True  # native bf16 (V100 and T4: fp16 only)

    @property
    def peak_flops(self) -> float:
        return self.dense_tflops * 1e12

    @property
    def bandwidth(self) -> float:
        """Bytes per second."""
        return self.bandwidth_gbs * 1e9


GPUS = {
    g.name: g
    for g in (
        GPU("V100-32GB", 32, 125, 900, bf16=False),
        GPU("A100-40GB", 40, 312, 1555),
        GPU("A100-80GB", 80, 312, 2039),
        GPU("H100-80GB", 80, 1979 / 2, 3350),
        GPU("H200", 141, 1979 / 2, 4800),
        GPU("T4", 16, 65, 320, bf16=False),
        GPU("RTX4090-24GB", 24, 165.2, 1008),
        GPU("L4-24GB", 24, 242 / 2, 300),
    )
}
PLANNER_GPUS = ("V100-32GB", "A100-40GB", "A100-80GB", "H100-80GB", "RTX4090-24GB", "L4-24GB")
ROOFLINE_GPUS = ("V100-32GB", "A100-80GB", "H100-80GB", "H200", "T4")

# What the planner keeps free of the card's memory for what max_memory_allocated does not see (stated, not hidden):
# the CUDA context and the kernels' modules (~0.3-0.6 GiB), cuBLAS / cuDNN workspaces, the memory the driver keeps
# (total_memory is below the nominal size), and the caching allocator's fragmentation (reserved - allocated).
CONTEXT_GIB = 1.5
FRAGMENTATION = 0.10  # of what remains after the context


def get_gpu(name: str) -> GPU:
    if name not in GPUS:
        raise KeyError(f"unknown GPU {name!r}; expected one of {sorted(GPUS)}")
    return GPUS[name]


def usable_bytes(gpu: GPU, context_gib: float = CONTEXT_GIB, fragmentation: float = FRAGMENTATION) -> int:
    """Allocated bytes the planner lets a run reach on ``gpu``: (memory - context) x (1 - fragmentation)."""
    return int((gpu.memory_gib - context_gib) * (1 - fragmentation) * GIB)
