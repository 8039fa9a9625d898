# PixArt-α schedule: AdamW, constant lr after a linear warmup, EMA 0.9999, grad clip 1.0. Keys left out keep the
# trainer's defaults (diffusion/config.py: grad_accum 1, seed 43, DDP, no auto_lr).
optimizer = dict(type="AdamW", lr=1e-4, weight_decay=3e-2, eps=1e-10, betas=(0.9, 0.999))
lr_schedule = dict(type="constant", warmup_steps=500)
train = dict(max_steps=100_000, batch_size=32, grad_clip=1.0, mixed_precision="bf16", ema_rate=0.9999)
