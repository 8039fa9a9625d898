# PixArt-Sigma teacher training / fine-tuning at 256 px (official PixArt_sigma_xl2_img256_internal.py): CAME lr 2e-5,
# warmup 1000, batch 64 per GPU, grad clip 0.01, gradient checkpointing; bf16 (official fp16), no EMA (as Σ).
#   python tools/make_null_caption.py --text-encoder output/pretrained_models/t5_ckpts/t5-v1_1-xxl --max-length 300 \
#       --out output/pretrained_models/null_caption_t5_300.safetensors
#   torchrun --nproc_per_node 8 train_scripts/train.py configs/pixart/pixart_sigma_xl2_img256.py
_base_ = [
    "../_base_/models/pixart_sigma_xl2_256.py",
    "../_base_/datasets/sigma_internal.py",
    "../_base_/methods/diffusion.py",
    "../_base_/schedules/came_sigma.py",
    "../_base_/runtime/sigma.py",
]
data = dict(resolution=256)
lr_schedule = dict(warmup_steps=1000)
train = dict(batch_size=64)
weights = dict(base="output/pretrained_models/PixArt-Sigma-XL-2-256x256.pth")
