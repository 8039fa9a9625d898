# PixArt-Sigma multi-scale training / fine-tuning at 512 px (official PixArt_sigma_xl2_img512_internalms.py):
# ASPECT_RATIO_512 buckets, CAME lr 2e-5, warmup 1000, batch 2 per GPU (the official value; its comment says 48),
# grad clip 0.01, gradient checkpointing; bf16 (official fp16), no EMA (as Σ).
#   torchrun --nproc_per_node 8 train_scripts/train.py configs/pixart/pixart_sigma_xl2_img512_ms.py
_base_ = [
    "../_base_/models/pixart_sigma_xl2_512_ms.py",
    "../_base_/datasets/sigma_internal_ms.py",
    "../_base_/methods/diffusion.py",
    "../_base_/schedules/came_sigma.py",
    "../_base_/runtime/sigma.py",
]
data = dict(resolution=512)
data_sampler = dict(table="ASPECT_RATIO_512")
lr_schedule = dict(warmup_steps=1000)
train = dict(batch_size=2)
weights = dict(base="output/pretrained_models/PixArt-Sigma-XL-2-512-MS.pth")
