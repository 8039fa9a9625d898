# PixArt-Sigma schedule (every official Σ config): CAME (came-pytorch; betas (0.9, 0.999, 0.9999), eps (1e-30, 1e-16),
# no weight decay, clip_threshold 1.0 by default) at lr 2e-5, constant after a linear warmup, grad clip 0.01, no EMA
# (Σ's train.py keeps none; train.ema_rate=0.9999 gives α's). bf16 autocast where the official code runs fp16
# (train.mixed_precision=fp16 for that); auto_lr stays off (the official sqrt rule rescales lr by the batch).
# The official runs count epochs; max_steps is ours. Leaves set batch_size and warmup_steps per recipe.
optimizer = dict(type="CAME", lr=2e-5, weight_decay=0.0, betas=(0.9, 0.999, 0.9999), eps=(1e-30, 1e-16))
lr_schedule = dict(type="constant", warmup_steps=1000)
train = dict(max_steps=100_000, batch_size=2, grad_clip=0.01, mixed_precision="bf16", ema_rate=None)
