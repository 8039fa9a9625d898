# Tiny CPU schedule for smoke runs and tests: a few hundred fp32 steps, small batches, no data workers.
optimizer = dict(type="AdamW", lr=1e-3, weight_decay=0.0, eps=1e-8, betas=(0.9, 0.999))
lr_schedule = dict(type="cosine", warmup_steps=10, min_lr_ratio=0.1)
train = dict(max_steps=300, batch_size=8, grad_clip=1.0, mixed_precision="no", ema_rate=0.99, num_workers=0)
