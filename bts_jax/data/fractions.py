"""The tumour pixel fraction of a split as training sees it (``model.output_bias_prior="auto"``)."""

from __future__ import annotations

from typing import Any

import numpy as np

from bts_jax.data.batching import host_shard
from bts_jax.data.cache import DataCache
from bts_jax.data.examples import get_examples
from bts_jax.data.pipeline import _decode_all, _pixels_key
from bts_jax.data.splits import SPLITS, split_examples


def mask_fraction(masks: np.ndarray) -> float:
    """The fraction of tumour (nonzero) pixels over a stack of masks.

    Args:
      masks: (N, S, S) or (N, S, S, 1) masks, 0 = background.

    Returns:
      Tumour pixels / all pixels, from exact integer counts (0.0 for no pixel).
    """
    masks = np.asarray(masks)
    return float(np.count_nonzero(masks)) / masks.size if masks.size else 0.0


def tumour_pixel_fraction(
    config: Any, split: str = "train", cache: DataCache | None = None
) -> float:
    """The fraction of tumour pixels in one split's masks, at the training resolution.

    The masks are those training sees before augmentation: binarised, fitted to
    ``config.data.image_size`` by ``config.data.resize_method`` (padding counts as background).
    Only ``split``'s images are read: "auto" priors must never see validation or test masks.
    The split is decoded in the order and under the cache key of a one-host run's training
    input, so with ``config.data.cache`` a one-host run decodes its training split once for
    both.

    Args:
      config: the experiment config (``seed``, ``data``).
      split: one of `SPLITS`, "train" for a prior.
      cache: the run's `DataCache` (a new one by default).

    Returns:
      The fraction in [0, 1].

    Raises:
      ValueError: an unknown split, or one without images.
    """
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}.")
    cache = DataCache() if cache is None else cache
    data = config.data
    examples = split_examples(config, get_examples(data, validate=True, cache=cache))[split]
    if not examples:
        raise ValueError(f"The {split} split holds no image: no tumour fraction to measure.")
    ordered = [examples[i] for i in host_shard(examples, config.seed, 0, 1)]
    if data.cache:
        _, masks = cache.get(_pixels_key(ordered, data), lambda: _decode_all(ordered, data))
    else:
        _, masks = _decode_all(ordered, data)
    return mask_fraction(masks.numpy())
