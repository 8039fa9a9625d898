# Runtime for tiny CPU runs: frequent logs and checkpoints, small sample grids.
checkpoint = dict(every=100, keep_last=2)
log = dict(every=10, wandb_project="pixart-delta", wandb_name=None)
validation = dict(every=100, prompts=["a red square", "a blue circle"], seed=0)
