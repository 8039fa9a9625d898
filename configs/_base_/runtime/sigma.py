# Runtime of the PixArt-Sigma configs: the defaults, with the official Σ validation sampler (DPM-Solver++ 14 steps,
# CFG 4.5); LCM configs keep their method's (LCM 4 steps).
_base_ = ["./default.py"]
validation = dict(sampler=dict(name="dpm", steps=14, cfg_scale=4.5))
