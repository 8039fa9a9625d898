# The embedded default's committed LCM student (assets/tiny_lcm/, rebuilt by `make lcm-student`, served by
# `make app`): `make demo`'s distillation (configs/lcm/tiny_lcm.py, same seed) cut at 100 steps. Its learning rate is
# constant after the 20-step warmup, so these are the first 100 steps of `make demo`'s run; at 4 steps the student's
# samples of the 8 validation prompts are already as clean as the teacher's DPM-Solver++ at 20 steps with CFG 4.5.
_base_ = ["./tiny_lcm.py"]
train = dict(max_steps=100)
