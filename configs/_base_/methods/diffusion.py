# PixArt-alpha teacher training: eps prediction + learned-range variance, hybrid loss (MSE + VLB), t ~ U{0..T-1}.
# The noise schedule is the top-level `diffusion` section, shared by the method, the samplers and the exporter; left
# out, it is PixArt-alpha's: diffusion = dict(num_train_timesteps=1000, beta_schedule="linear", beta_start=1e-4,
# beta_end=0.02) (diffusion/schedulers/process.py).
method = dict(type="DiffusionLoss", pred_sigma=True)
