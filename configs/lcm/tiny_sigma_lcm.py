# The embedded default's PixArt-Sigma LCM (issue 18 item 5): the tiny Sigma teacher
# (configs/pixart/tiny_sigma_teacher.py, KV compression in blocks 3-5) distilled with PixArt-delta's LCM method,
# exactly as configs/lcm/tiny_lcm.py distils the alpha teacher (same method settings, schedule and seed). The student
# has the teacher's architecture, KV compression included, and starts from all its weights (attn.sr / attn.norm
# too). weights.teacher is where `make sigma-demo` publishes the fine-tuned teacher (fp16, as assets/tiny_teacher); the
# demo runs this config again with model.kv_compress_config=None on the teacher fine-tuned without compression.
_base_ = ["./tiny_lcm.py"]
model = dict(kv_compress_config=dict(sampling="conv", scale_factor=2, kv_compress_layer=[3, 4, 5]))
weights = dict(teacher="output/sigma_demo/kv/teacher/model.safetensors")  # distilled; the student starts from it
