# PixArt-Sigma at 1024 px with KV token compression (official PixArt_sigma_xl2_img1024_internalms_kvcompress.py):
# keys and values of the self-attention in blocks 14-27 pooled 2x2 by a depthwise conv (+ LayerNorm) on the token
# grid, queries untouched. Fine-tuned from the released 1024-MS checkpoint, which has no compression weights: those
# (blocks.N.attn.sr.* / norm.*) start at their mean-pool init, with a warning naming them. CAME lr 2e-5, warmup 500,
# batch 4 per GPU (the official value; its comment says 16), grad clip 0.01; bf16 (official fp16), no EMA.
# No KV-compressed weights were released, and diffusers cannot hold them (the export refuses them).
#   torchrun --nproc_per_node 8 train_scripts/train.py configs/pixart/pixart_sigma_xl2_img1024_ms_kvcompress.py
_base_ = [
    "../_base_/models/pixart_sigma_xl2_1024_ms.py",
    "../_base_/datasets/sigma_internal_ms.py",
    "../_base_/methods/diffusion.py",
    "../_base_/schedules/came_sigma.py",
    "../_base_/runtime/sigma.py",
]
model = dict(kv_compress_config=dict(sampling="conv", scale_factor=2, kv_compress_layer=list(range(14, 28))))
lr_schedule = dict(warmup_steps=500)
train = dict(batch_size=4)
weights = dict(base="output/pretrained_models/PixArt-Sigma-XL-2-1024-MS.pth")
