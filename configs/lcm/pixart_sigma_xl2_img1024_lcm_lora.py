# PixArt-Sigma LCM-LoRA. There is no official Σ LCM-LoRA script: this follows our α LoRA config
# (configs/lcm/pixartms_xl2_img1024_lcm_lora.py, after the official α train_pixart_lcm_lora.py): rank-32 LoRA with
# peft's default alpha 8 on the student's linear layers, the student is its own target (no EMA network), batch 16 per
# GPU, the optimizer of the LCM config it extends (here Σ's: CAME lr 1e-5), and the teacher's unconditional branch
# T5("") under each caption's mask, which for Σ is the same 300-token file as the model's null caption.
#   torchrun --nproc_per_node 2 train_scripts/train_lcm.py configs/lcm/pixart_sigma_xl2_img1024_lcm_lora.py
_base_ = ["./pixart_sigma_xl2_img1024_lcm.py"]
method = dict(
    lora=dict(_delete_=True, rank=32, alpha=8),
    null_caption="output/pretrained_models/null_caption_t5_300.safetensors",
)
train = dict(batch_size=16)
