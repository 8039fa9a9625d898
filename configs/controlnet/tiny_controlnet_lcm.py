# Route (b) of the controllable 4-step LCM on the embedded default (PixArt-delta §4 + §3.1): the tiny ControlNet
# trained on the teacher (assets/tiny_controlnet, N = 3) put on the distilled LCM student's frozen base
# (assets/tiny_lcm), then consistency-distilled with the control passed. The teacher is the tiny teacher under that
# same ControlNet (weights.teacher), guided with w = 4.5 on the learned null caption; student, both halves of
# the teacher's guidance batch and the EMA target see the same control latent; only the 3 copies and their zero
# linears train. Step 0 is route (a) (the ControlNet transferred as it is); tools/reproduce_controlnet.py --route-b
# measures both.
#   python train_scripts/train_controlnet.py configs/controlnet/tiny_controlnet_lcm.py --work-dir output/cn_lcm_b
_base_ = ["../lcm/tiny_lcm.py"]  # the distillation that made the student: its model, method, data and runtime
weights = dict(
    base="assets/tiny_lcm/model.safetensors",  # the student's base: the 4-step LCM student
    controlnet="assets/tiny_controlnet/model.safetensors",  # the ControlNet trained on the teacher: the copies' start
    teacher="assets/tiny_teacher/model.safetensors",  # the teacher's base: PixArt-alpha
)
controlnet = dict(copy_blocks=3, topology="transformer")
data = dict(load_control=True)
optimizer = dict(lr=1e-4, weight_decay=3e-2)
lr_schedule = dict(type="constant", warmup_steps=10, min_lr_ratio=0.0)
train = dict(max_steps=150, batch_size=16, mixed_precision="no", ema_rate=None, grad_clip=1.0, seed=43)
checkpoint = dict(every=50, keep_last=3)
validation = dict(every=50, control="embedded")
