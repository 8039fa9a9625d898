# LCM-LoRA variant (official train_pixart_lcm_lora.py): rank-32 LoRA on the student's linear layers, the student is
# its own target (no EMA network), batch 16/GPU.
_base_ = ["./pixartms_xl2_img1024_lcm.py"]
method = dict(lora=dict(_delete_=True, rank=32, alpha=32))
optimizer = dict(lr=1e-4)
train = dict(batch_size=16)
