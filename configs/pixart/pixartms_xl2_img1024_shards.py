# configs/pixart/pixartms_xl2_img1024.py (PixArtMS-XL/2 teacher training / fine-tuning at 1024 px, aspect-ratio
# buckets) trained from LAION-style WebDataset shards instead of feature caches (docs/data.md "Training from shards"):
# T5-XXL and the SD VAE encode each batch in the training step (weights in bf16 on the GPU); each shard sample's json
# size picks its bucket, and the original size is the img_hw micro-condition (img2dataset's original_height/width).
#   img2dataset --url_list laion.parquet --output_format webdataset --output_folder data/laion_shards ...
#   torchrun --nproc_per_node 8 train_scripts/train.py configs/pixart/pixartms_xl2_img1024_shards.py \
#       --work-dir output/pixartms1024_shards [--resume auto]
# Under train.parallel=fsdp T5 is sharded on the model's mesh too (encoding.shard_text_encoder). An exact resume needs
# the same ranks, train.num_workers, train.seed and shard list (else data.on_layout_change="next_epoch").
_base_ = ["./pixartms_xl2_img1024.py"]
data = dict(
    _delete_=True,
    type="ShardDataset",
    urls="data/laion_shards/{00000..09999}.tar",
    resolution=1024,
    multi_scale=True,
    shuffle_buffer=1000,  # samples per reader: 1000 x ~0.3 MB JPEG in each loader worker
)
data_sampler = None  # the shard stream buckets by aspect ratio itself (data.multi_scale)
train = dict(num_workers=4)
encoding = dict(dtype="auto")
