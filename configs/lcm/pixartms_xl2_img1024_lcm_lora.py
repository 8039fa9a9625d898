# LCM-LoRA variant (official train_pixart_lcm_lora.py): rank-32 LoRA on the student's linear layers, the student is
# its own target (no EMA network), batch 16/GPU ("16 for LCM-LoRA" in the official config). As the official script:
# - the optimizer is the LCM config's (AdamW, lr 2e-5);
# - LoraConfig(r=32) without lora_alpha, i.e. peft's default alpha 8 (a scale of 8/32 on B A);
# - the teacher's unconditional branch is T5("") under each caption's own mask, not the learned null caption:
#   write it once with tools/make_null_caption.py --text-encoder <T5 dir> --out <the path below>.
# Deviation: LoRA sits on our fused qkv / kv linears (one adapter each, not one per q, k, v) and not on the
# embedders or the final layer (see README, Notes and deviations).
_base_ = ["./pixartms_xl2_img1024_lcm.py"]
method = dict(
    lora=dict(_delete_=True, rank=32, alpha=8),
    null_caption="output/pretrained_models/null_caption.safetensors",
)
train = dict(batch_size=16)
