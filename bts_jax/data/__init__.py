"""Input pipeline: sources, OpenCV-exact equalisation, splits by id block, host-local batches.

Training augmentation is a list of ops by name, ``config.data.augmentations``
(`bts_jax.data.augment_ops`).
Importing this package hides the GPUs from TensorFlow, which only feeds the host
(docs/design.md section 3).
"""

from bts_jax.data.augment_config import augment_pair, augmentations_of, check_augmentations
from bts_jax.data.augment_ops import apply_ops, op_names, parse_ops, register_op
from bts_jax.data.batching import local_batch_size, num_eval_batches, steps_per_epoch
from bts_jax.data.cache import DataCache
from bts_jax.data.examples import get_examples
from bts_jax.data.fractions import mask_fraction, tumour_pixel_fraction
from bts_jax.data.images import (
    as_grayscale,
    content_box,
    load_grayscale,
    preprocess_image,
    read_image_file,
    restore_original_size,
)
from bts_jax.data.pipeline import InputPipeline, make_dataset
from bts_jax.data.preprocessing import equalize_histogram
from bts_jax.data.sources import SAMPLE_DIR, TUMOUR_TYPES, Example
from bts_jax.data.splits import (
    SPLIT_SETTINGS,
    SPLITS,
    get_split_ids,
    split_examples,
    split_record,
)

__all__ = [
    "SAMPLE_DIR",
    "SPLITS",
    "SPLIT_SETTINGS",
    "TUMOUR_TYPES",
    "DataCache",
    "Example",
    "InputPipeline",
    "apply_ops",
    "as_grayscale",
    "augment_pair",
    "augmentations_of",
    "check_augmentations",
    "content_box",
    "equalize_histogram",
    "get_examples",
    "get_split_ids",
    "load_grayscale",
    "local_batch_size",
    "make_dataset",
    "mask_fraction",
    "num_eval_batches",
    "op_names",
    "parse_ops",
    "preprocess_image",
    "read_image_file",
    "register_op",
    "restore_original_size",
    "split_examples",
    "steps_per_epoch",
    "split_record",
    "tumour_pixel_fraction",
]
