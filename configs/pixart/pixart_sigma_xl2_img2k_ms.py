# PixArt-Sigma multi-scale training / fine-tuning at 2K (official PixArt_sigma_xl2_img2K_internalms_kvcompress.py,
# which sets kv_compress=False, so no compression): the 40 ASPECT_RATIO_2048 buckets (1024 x 4096 .. 4096 x 1024),
# pe_interpolation 4.0, CAME lr 2e-5, warmup 100, batch 4 per GPU (the official value; its comment says 48), grad clip
# 0.01, gradient checkpointing; bf16 (official fp16), no EMA (as Σ). weights.base: the released 2K-MS checkpoint.
#   torchrun --nproc_per_node 8 train_scripts/train.py configs/pixart/pixart_sigma_xl2_img2k_ms.py
_base_ = [
    "../_base_/models/pixart_sigma_xl2_2k_ms.py",
    "../_base_/datasets/sigma_internal_ms.py",
    "../_base_/methods/diffusion.py",
    "../_base_/schedules/came_sigma.py",
    "../_base_/runtime/sigma.py",
]
data = dict(resolution=2048)
data_sampler = dict(table="ASPECT_RATIO_2048")
lr_schedule = dict(warmup_steps=100)
train = dict(batch_size=4)
weights = dict(base="output/pretrained_models/PixArt-Sigma-XL-2-2K-MS.pth")
