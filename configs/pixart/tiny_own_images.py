# Smoke-train a tiny multi-scale PixArt on your own images with a local AutoencoderKL (4-channel latents): the same
# path a real run takes (make_data_info -> extract_features -> train -> sample), at toy size on a CPU.
_base_ = [
    "../_base_/models/tiny_vae_latent.py",
    "../_base_/datasets/own_images.py",
    "../_base_/methods/diffusion.py",
    "../_base_/schedules/tiny_cpu.py",
    "../_base_/runtime/embedded.py",
]
train = dict(max_steps=200, batch_size=2, seed=0)
validation = dict(every=100, prompts=["a photo", "a picture of a street at night"])
checkpoint = dict(every=100, keep_last=1)
