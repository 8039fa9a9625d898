# PixArt-δ §3.3 LCM distillation: AdamW lr 2e-5 (no weight decay), 5K iterations, grad clip 0.01 (official code).
# The EMA target network (µ = 0.95) belongs to the LCM method; the trainer keeps no extra EMA.
optimizer = dict(type="AdamW", lr=2e-5, weight_decay=0.0, eps=1e-10, betas=(0.9, 0.999))
lr_schedule = dict(type="constant", warmup_steps=100)
train = dict(max_steps=5_000, batch_size=12, grad_clip=0.01, mixed_precision="bf16", ema_rate=None)
