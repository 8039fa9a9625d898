# PixArt-alpha teacher training: eps prediction + learned-range variance, hybrid loss (MSE + VLB), t ~ U{0..999}.
method = dict(type="DiffusionLoss", num_steps=1000, beta_start=1e-4, beta_end=0.02, pred_sigma=True)
