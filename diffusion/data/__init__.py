"""Data: datasets over cached features, aspect-ratio buckets, codecs, the text encoder and the embedded default.

Importing this package registers FeatureDataset and ShardDataset (DATASETS), AspectRatioBatchSampler
(DATA_SAMPLERS) and the codecs (CODECS).
"""

from diffusion.data.buckets import (
    ASPECT_RATIO_256,
    ASPECT_RATIO_512,
    ASPECT_RATIO_1024,
    ASPECT_RATIO_2048,
    AspectRatioBatchSampler,
    aspect_ratio_table,
    binning_table,
    closest_bucket,
    resize_and_crop,
)
from diffusion.data.captions import clean_caption
from diffusion.data.codec import AutoencoderKLCodec, PixelCodec, make_tiny_vae
from diffusion.data.dataset import FeatureDataset, collate, prepare_batch
from diffusion.data.default import EMBEDDED_MAX_LENGTH, ensure_embedded_default
from diffusion.data.embedded import VALIDATION_PROMPTS, attribute_vocab, caption, parse_prompt, render
from diffusion.data.features import extract_features, feature_name
from diffusion.data.images import load_pixels, open_rgb, oriented_size, pixels_to_model
from diffusion.data.shards import ShardDataset, ShardStream, make_shards
from diffusion.data.text_encoder import TextEncoder, ensure_tiny_text_encoder, make_tiny_text_encoder

__all__ = [
    "ASPECT_RATIO_1024",
    "ASPECT_RATIO_2048",
    "ASPECT_RATIO_256",
    "ASPECT_RATIO_512",
    "EMBEDDED_MAX_LENGTH",
    "VALIDATION_PROMPTS",
    "AspectRatioBatchSampler",
    "AutoencoderKLCodec",
    "FeatureDataset",
    "ShardDataset",
    "ShardStream",
    "PixelCodec",
    "TextEncoder",
    "aspect_ratio_table",
    "attribute_vocab",
    "binning_table",
    "caption",
    "clean_caption",
    "closest_bucket",
    "collate",
    "resize_and_crop",
    "ensure_embedded_default",
    "ensure_tiny_text_encoder",
    "extract_features",
    "feature_name",
    "load_pixels",
    "make_shards",
    "make_tiny_text_encoder",
    "make_tiny_vae",
    "open_rgb",
    "oriented_size",
    "parse_prompt",
    "pixels_to_model",
    "prepare_batch",
    "render",
]
