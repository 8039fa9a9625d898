# PixArt-delta §4 ControlNet-Transformer on PixArt-Sigma 1024-MS (no official Σ ControlNet exists; the maintainers
# call it "similar to the alpha-controlnet"): our α ControlNet recipe (configs/controlnet/
# pixartms_xl2_img1024_controlnet.py) on the Σ base: N = 13 trainable copies of a frozen PixArt-Sigma-XL-2-1024-MS, HED
# control, single-scale 1024, AdamW 2e-5 / wd 3e-2, batch 4 per GPU, grad accumulation 4, grad clip 0.01, gradient
# checkpointing, bf16, no EMA.
#   torchrun --nproc_per_node 8 train_scripts/train_controlnet.py \
#       configs/controlnet/pixart_sigma_xl2_img1024_controlnet.py
# Its features (300-token captions, SDXL latents and the HED control latents of each image):
#   torchrun --nproc_per_node 8 tools/extract_features.py --data-root data/InternData --resolution 1024 \
#       --text-encoder output/pretrained_models/t5_ckpts/t5-v1_1-xxl --max-length 300 --no-clean-caption --codec vae \
#       --vae output/pretrained_models/pixart_sigma_sdxlvae_T5_diffusers/vae --scale-factor 0.13025 \
#       --control hed --hed output/pretrained_models/ControlNetHED.pth
_base_ = [
    "../_base_/models/pixart_sigma_xl2_1024_ms.py",
    "../_base_/datasets/sigma_internal.py",
    "../_base_/methods/diffusion.py",
    "../_base_/schedules/adamw_controlnet.py",
    "../_base_/runtime/sigma.py",
]
weights = dict(base="output/pretrained_models/PixArt-Sigma-XL-2-1024-MS.pth")
controlnet = dict(copy_blocks=13, topology="transformer")
data = dict(resolution=1024, load_control=True)  # control_features_1024/ (--control hed, above)
train = dict(batch_size=4, ema_rate=None)
