# PixArt-delta LCM distillation (§3.1, Algorithm 1): fixed guidance w = 4.5 (no w-embedding), DDIM solver on 50 of
# the 1000 steps (skip k = 20), EMA target mu = 0.95, Huber loss c = 0.001, c_skip/c_out with sigma_data 0.5 and
# timestep scaling 10; the teacher's unconditional branch is the learned null caption with the caption's own mask.
# num_ddim_steps, sigma_data and timestep_scaling are also how the student is sampled (DiffusionProcess.from_config);
# the teacher's noise schedule is the top-level `diffusion` section (left out: PixArt-alpha's linear 1e-4 -> 0.02,
# 1000 steps), shared with the samplers and the exporter.
method = dict(
    type="LCMDistillation",
    w=4.5,
    w_range=None,
    guidance_embedding=False,
    ema_decay=0.95,
    loss_type="huber",
    huber_c=0.001,
    num_ddim_steps=50,
    sigma_data=0.5,
    timestep_scaling=10.0,
    null_caption="learned",
    lora=None,
    sampler=dict(name="lcm", steps=4),
    teacher_dtype=None,  # "bf16": the frozen teacher in bfloat16 (half its memory; it only runs forward)
    target_dtype=None,  # "bf16" also for the EMA target (loses EMA updates below bf16 precision; off by default)
)
