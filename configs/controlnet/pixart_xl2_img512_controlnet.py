# PixArt-delta §4 ControlNet-Transformer at 512 px (official PixArt_xl2_img512_controlHed.py): N = 13 trainable copies
# on a frozen PixArt-XL-2-512x512, HED control latents, AdamW 2e-5 / wd 3e-2, batch 12 per GPU, grad accumulation 4,
# grad clip 0.01, gradient checkpointing, no EMA, the teacher's diffusion loss (paper: 16 V100s).
#   torchrun --nproc_per_node 8 train_scripts/train_controlnet.py configs/controlnet/pixart_xl2_img512_controlnet.py
# Its features (captions, latents and the HED control latents of each image; docs/controlnet.md):
#   torchrun --nproc_per_node 8 tools/extract_features.py --data-root data/InternData --resolution 512 \
#       --text-encoder output/pretrained_models/t5_ckpts/t5-v1_1-xxl --codec vae \
#       --vae output/pretrained_models/sd-vae-ft-ema --control hed --hed output/pretrained_models/ControlNetHED.pth
_base_ = [
    "../_base_/models/pixart_xl2_512.py",
    "../_base_/datasets/internal_512.py",
    "../_base_/methods/diffusion.py",
    "../_base_/schedules/adamw_controlnet.py",
    "../_base_/runtime/default.py",
]
weights = dict(base="output/pretrained_models/PixArt-XL-2-512x512.pth")  # the frozen base
controlnet = dict(copy_blocks=13, topology="transformer")
data = dict(load_control=True)  # control_features_512/ (--control hed, above)
train = dict(batch_size=12, ema_rate=None)
