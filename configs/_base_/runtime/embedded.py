# Runtime for the embedded default: checkpoints, logs and sample grids of the 8 validation prompts
# (diffusion.data.embedded.VALIDATION_PROMPTS), which cover every shape, colour, size, position and background.
checkpoint = dict(every=500, keep_last=1)
log = dict(every=10, wandb_project="pixart-delta", wandb_name=None)
validation = dict(
    every=1000,
    prompts=[
        "a large red circle at the top left on a gray background",
        "a small blue square at the bottom right on a white background",
        "a large green triangle in the center on a black background",
        "a small yellow cross at the top right on a gray background",
        "a large purple square at the bottom left on a beige background",
        "a small orange circle in the center on a black background",
        "a large blue cross at the bottom right on a beige background",
        "a small red triangle at the top left on a white background",
    ],
    seed=0,
    sampler=None,
)
