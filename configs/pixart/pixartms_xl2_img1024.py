# PixArt-alpha multi-scale teacher training / fine-tuning at 1024 px with aspect-ratio buckets (PixArtMS-XL/2).
#   torchrun --nproc_per_node 8 train_scripts/train.py configs/pixart/pixartms_xl2_img1024.py
_base_ = [
    "../_base_/models/pixartms_xl2_1024.py",
    "../_base_/datasets/internal_1024_ms.py",
    "../_base_/methods/diffusion.py",
    "../_base_/schedules/adamw_constant.py",
    "../_base_/runtime/default.py",
]
weights = dict(base="output/pretrained_models/PixArt-XL-2-1024-MS.pth")  # fine-tuned from the release
