# Checkpointing, logging and validation defaults shared by every run. validation.sampler is left out on purpose:
# absent means method.sampler_defaults(), and mmengine cannot merge a child dict into a base None.
checkpoint = dict(every=1000, keep_last=2)
log = dict(every=10, wandb_project="pixart-delta", wandb_name=None)
validation = dict(
    every=500,
    prompts=[
        "a photo of an astronaut riding a horse on the moon",
        "a cute corgi wearing a red scarf, studio lighting",
        "a watercolor painting of a lighthouse at sunset",
        "a bowl of ramen with chopsticks, top view",
    ],
    seed=0,
)
