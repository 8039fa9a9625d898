# The embedded default's ControlNet-Transformer (PixArt-delta §4): the committed tiny teacher (assets/tiny_teacher,
# 6 blocks) frozen, N = 3 = depth / 2 trainable copies (13 of 28 in the paper), trained on the embedded default's exact
# edge maps (control_features_32/) with the teacher's loss. AdamW with the official weight decay; lr, batch and
# schedule sized to a shared 2-core CPU (the paper: 2e-5, batch 12 x 16 V100s). `make controlnet` trains it and
# publishes assets/tiny_controlnet/; its checkpoints every 25 steps feed the edge-F1-vs-step plot.
_base_ = [
    "../_base_/models/tiny.py",
    "../_base_/datasets/embedded_32.py",
    "../_base_/methods/diffusion.py",
    "../_base_/schedules/tiny_cpu.py",
    "../_base_/runtime/embedded.py",
]
weights = dict(base="assets/tiny_teacher/model.safetensors")  # the frozen base
controlnet = dict(copy_blocks=3, topology="transformer")
data = dict(load_control=True)
optimizer = dict(lr=1e-3, weight_decay=3e-2)
lr_schedule = dict(type="constant", warmup_steps=10, min_lr_ratio=0.0)
train = dict(max_steps=200, batch_size=16, grad_accum=1, mixed_precision="bf16", ema_rate=None, seed=43)
checkpoint = dict(every=25, keep_last=8)
validation = dict(every=1000, control="embedded")  # grids: each sample beside the edge map it follows
