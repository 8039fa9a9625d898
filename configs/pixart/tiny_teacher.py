# The embedded default's teacher (stands in for the released PixArt-alpha): trained from scratch by `make teacher`
# on the embedded shapes data with this config and its fixed seed; the result is committed as assets/tiny_teacher/.
_base_ = [
    "../_base_/models/tiny.py",
    "../_base_/datasets/embedded_32.py",
    "../_base_/methods/diffusion.py",
    "../_base_/schedules/tiny_cpu.py",
    "../_base_/runtime/embedded.py",
]
optimizer = dict(lr=5e-4, weight_decay=0.0)
lr_schedule = dict(type="cosine", warmup_steps=100, min_lr_ratio=0.1)
train = dict(max_steps=1500, batch_size=64, mixed_precision="bf16", ema_rate=0.999, seed=43, num_workers=0)
validation = dict(every=500)  # sampler None: the method's default (DPM-Solver++ 20 steps, CFG 4.5)
checkpoint = dict(every=250, keep_last=1)
