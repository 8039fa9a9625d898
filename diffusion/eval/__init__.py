"""Evaluation (PixArt-δ §3.3, §5): FID with a selectable feature network, prompt-attribute accuracy on the embedded
shapes data, and sample folders from a checkpoint.

On the embedded data FID uses the features of a small attribute classifier trained on rendered images (InceptionV3
cannot be downloaded here); at real scale the standard FID Inception from a local weights file, and CLIP score from a
local CLIP folder.
"""

from diffusion.eval.attribute_net import (
    AttributeNet,
    attribute_accuracy,
    ensure_attribute_net,
    load_attribute_net,
    train_attribute_net,
)
from diffusion.eval.clip_score import CLIPScorer
from diffusion.eval.extractors import FEATURE_EXTRACTORS, EmbeddedFeatures, build_feature_extractor
from diffusion.eval.fid import (
    compute_statistics,
    extract_features,
    fid_between,
    folder_features,
    frechet_distance,
    load_statistics,
    save_statistics,
    statistics_of,
)
from diffusion.eval.images import FolderReport, list_images, read_sample_folder, save_samples
from diffusion.eval.inception import FIDInceptionFeatures, TorchvisionInceptionFeatures
from diffusion.eval.sampling import read_prompts, sample_to_folder, shard_batches

__all__ = [
    "FEATURE_EXTRACTORS",
    "AttributeNet",
    "CLIPScorer",
    "EmbeddedFeatures",
    "FolderReport",
    "FIDInceptionFeatures",
    "attribute_accuracy",
    "build_feature_extractor",
    "compute_statistics",
    "ensure_attribute_net",
    "extract_features",
    "fid_between",
    "folder_features",
    "frechet_distance",
    "list_images",
    "load_attribute_net",
    "load_statistics",
    "read_prompts",
    "read_sample_folder",
    "sample_to_folder",
    "save_samples",
    "save_statistics",
    "shard_batches",
    "statistics_of",
    "TorchvisionInceptionFeatures",
    "train_attribute_net",
]
