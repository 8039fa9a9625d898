# Route (b) of the controllable 4-step LCM at 1024 px (PixArt-delta §4 + §3.1): the released
# PixArt-XL-2-1024-ControlNet (trained on PixArt-alpha; only its copies are taken, the base is weights.base) put on a
# 4-step student (a train_lcm.py run of configs/lcm/pixartms_xl2_img1024_lcm.py, or the released
# PixArt-LCM-XL-2-1024-MS), then consistency-distilled with the control passed: the teacher is PixArt-XL-2-1024-MS
# under the same copies, guided with w = 4.5; only the 13 copies and their zero linears train (AdamW 2e-5, grad clip
# 0.01, gradient checkpointing). Control latents: tools/extract_features.py --control hed (the 1024 ControlNet config).
#   torchrun --nproc_per_node 8 train_scripts/train_controlnet.py \
#       configs/controlnet/pixartms_xl2_img1024_controlnet_lcm.py
_base_ = ["../lcm/pixartms_xl2_img1024_lcm.py"]
weights = dict(
    base="output/pretrained_models/PixArt-LCM-XL-2-1024-MS.pth",  # the student's (frozen) base
    controlnet="output/pretrained_models/PixArt-XL-2-1024-ControlNet.pth",  # where the student's copies start
    teacher="output/pretrained_models/PixArt-XL-2-1024-MS.pth",  # the teacher's base, under the same copies
)
controlnet = dict(copy_blocks=13, topology="transformer")
method = dict(teacher_dtype="bf16")
data = dict(resolution=1024, load_control=True)
train = dict(batch_size=4, grad_accum=4)
checkpoint = dict(every=200, keep_last=3)
validation = dict(every=200, control=None)  # set image paths (+ annotator="hed", hed_path=...) for controlled grids
