# PixArt-Sigma LCM distillation at 1024 px (official PixArt_sigma_xl2_img1024_lcm.py + train_pixart_lcm.py; no Σ LCM
# weights were released): fixed w = 4.5, 50 DDIM steps (k = 20), Huber c = 0.001, EMA target 0.95, CAME lr 1e-5,
# warmup 100, batch 12 per GPU, grad clip 0.01, gradient checkpointing, bf16 (official fp16). The teacher's
# unconditional branch is the model's null caption, i.e. T5("") at 300 tokens from weights.null_caption (the
# official loader writes it over y_embedding), under each caption's mask, as the official script.
#   torchrun --nproc_per_node 2 train_scripts/train_lcm.py configs/lcm/pixart_sigma_xl2_img1024_lcm.py
#   python tools/sample.py --config configs/lcm/pixart_sigma_xl2_img1024_lcm.py --checkpoint RUN/checkpoints/step_N \
#       --prompts "..." --out output/sigma_lcm                                   # LCM 4 steps
_base_ = [
    "../_base_/models/pixart_sigma_xl2_1024_ms.py",
    "../_base_/datasets/sigma_internal_ms.py",
    "../_base_/methods/lcm.py",
    "../_base_/schedules/came_sigma.py",
    "../_base_/runtime/default.py",
]
# As the α LCM config (README, Notes): the student's caption dropout is 0 (the official Σ script trains it with 0.1).
model = dict(class_dropout_prob=0.0)
method = dict(teacher_dtype="bf16")  # the frozen teacher in bf16, as the official script casts it; EMA target fp32
optimizer = dict(lr=1e-5)
lr_schedule = dict(warmup_steps=100)
train = dict(max_steps=5_000, batch_size=12)
# the teacher, and the student's start (official: None; its --load-from is ignored)
weights = dict(teacher="output/pretrained_models/PixArt-Sigma-XL-2-1024-MS.pth")
checkpoint = dict(every=200, keep_last=3)
validation = dict(every=200)  # sampler None: the method's default (LCM, 4 steps)
