# The embedded default's LCM distillation (the main job of `make demo`): the committed tiny teacher is distilled
# with the paper's method settings; only the schedule is scaled to 2 CPU cores.
_base_ = [
    "../_base_/models/tiny.py",
    "../_base_/datasets/embedded_32.py",
    "../_base_/methods/lcm.py",
    "../_base_/schedules/tiny_cpu.py",
    "../_base_/runtime/embedded.py",
]
model = dict(class_dropout_prob=0.0)  # see configs/lcm/pixartms_xl2_img1024_lcm.py
weights = dict(teacher="assets/tiny_teacher/model.safetensors")  # distilled; the student starts from it
optimizer = dict(lr=2e-4, weight_decay=0.0)
lr_schedule = dict(type="constant", warmup_steps=20, min_lr_ratio=0.0)
train = dict(max_steps=300, batch_size=32, mixed_precision="bf16", ema_rate=None, grad_clip=1.0, seed=43)
checkpoint = dict(every=100, keep_last=1)
validation = dict(every=300)  # sampler None: the method's default (LCM, 4 steps)
