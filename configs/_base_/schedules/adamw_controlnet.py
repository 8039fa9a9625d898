# PixArt-δ §4.3 ControlNet-Transformer: AdamW lr 2e-5, gradient accumulation 4, grad clip 0.01 (official code).
optimizer = dict(type="AdamW", lr=2e-5, weight_decay=3e-2, eps=1e-10, betas=(0.9, 0.999))
lr_schedule = dict(type="constant", warmup_steps=0)
train = dict(max_steps=20_000, batch_size=12, grad_accum=4, grad_clip=0.01, mixed_precision="bf16")
