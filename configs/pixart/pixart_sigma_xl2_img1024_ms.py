# PixArt-Sigma multi-scale training / fine-tuning at 1024 px (official PixArt_sigma_xl2_img1024_internalms.py):
# ASPECT_RATIO_1024 buckets, CAME lr 2e-5, warmup 1000, batch 2 per GPU (the official value; 12 fit with
# pre-extracted features, its comment says), grad clip 0.01, gradient checkpointing; bf16 (official fp16), no EMA.
# weights.base is the released 1024-MS checkpoint (the official config leaves it None and takes --load-from).
#   torchrun --nproc_per_node 8 train_scripts/train.py configs/pixart/pixart_sigma_xl2_img1024_ms.py
#   python tools/sample.py --config configs/pixart/pixart_sigma_xl2_img1024_ms.py --prompts "..." --out output/sigma
_base_ = [
    "../_base_/models/pixart_sigma_xl2_1024_ms.py",
    "../_base_/datasets/sigma_internal_ms.py",
    "../_base_/methods/diffusion.py",
    "../_base_/schedules/came_sigma.py",
    "../_base_/runtime/sigma.py",
]
lr_schedule = dict(warmup_steps=1000)
train = dict(batch_size=2)
weights = dict(base="output/pretrained_models/PixArt-Sigma-XL-2-1024-MS.pth")
