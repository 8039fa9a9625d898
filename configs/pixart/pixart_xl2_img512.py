# PixArt-alpha teacher training at 512 px (PixArt-XL/2, fixed resolution): AdamW lr 1e-4, batch 32/GPU, bf16.
#   torchrun --nproc_per_node 8 train_scripts/train.py configs/pixart/pixart_xl2_img512.py
_base_ = [
    "../_base_/models/pixart_xl2_512.py",
    "../_base_/datasets/internal_512.py",
    "../_base_/methods/diffusion.py",
    "../_base_/schedules/adamw_constant.py",
    "../_base_/runtime/default.py",
]
data = dict(resolution=512)
