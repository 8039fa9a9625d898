# The embedded default's teacher (configs/pixart/tiny_teacher.py: same model, method, schedule and seed) trained from
# WebDataset shards of the embedded images with on-the-fly encoding (issue 19, docs/data.md "Training from shards"):
# the shards hold images and captions, and the tiny T5 and the pixel codec run in every training step instead of
# once into feature caches. The images come from `make teacher` (or tools/make_embedded_data.py); then
#   python tools/make_shards.py output/embedded_data --out output/embedded_shards      # 5 shards of 1000 samples
#   python train_scripts/train.py configs/pixart/tiny_teacher_shards.py --work-dir output/tiny_teacher_shards
#   torchrun --nproc_per_node 2 train_scripts/train.py configs/pixart/tiny_teacher_shards.py \
#       --work-dir output/tiny_teacher_shards_2ranks          # add --resume auto after a stop: it resumes exactly
# The codec and text encoder are the tiny teacher's (configs/_base_/datasets/embedded_32.py), so its samples and
# checkpoints are comparable with the cached run's.
_base_ = ["./tiny_teacher.py"]
data = dict(
    _delete_=True,
    type="ShardDataset",
    urls="output/embedded_shards/{00000..00004}.tar",
    resolution=32,
    multi_scale=False,
    shuffle_buffer=1000,
)
train = dict(num_workers=2)  # one shard reader per DataLoader worker; decoding a 32 px PNG is cheap
encoding = dict(dtype="auto")  # T5 and the codec in bf16 on a GPU, fp32 on a CPU
