"""Host-local batches for training and evaluation (tf.data on the host, numpy out).

Determinism: a run is a function of ``config.seed`` only.

- Each host's shard of a split is fixed: the split's ids, permuted once from the seed, then every
  ``process_count``-th one from position ``process_index``. A host reads only its shard's files.
- The training order of epoch e on a host is a permutation of its shard drawn from (seed, e, host).
- The augmentation of an example in epoch e is drawn from (seed, e, the example's position in the
  sorted split), with stateless TF random ops, so it does not depend on the host count, the batch it
  lands in, the number of parallel calls, or whether the examples come from the cache.
- ``skip_batches`` cuts the epoch's order list, so a run resumed mid-epoch sees the very batches it
  would have seen, without decoding the skipped ones.

Every host yields the same number of batches (collectives would hang otherwise): ``steps_per_epoch``
is ``floor(min shard size / local batch)`` for training; evaluation yields ``ceil(split size /
global batch)`` batches on every host, padded with ``valid=False`` entries so each image is counted
exactly once.
"""

from __future__ import annotations

import collections
import math
import threading
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import numpy as np

from bts_jax.data._tf import tf
from bts_jax.data.preprocessing import augment_pair, decode_grayscale, preprocess_pair
from bts_jax.data.sources import Example, get_examples, source_dir
from bts_jax.data.splits import SPLITS, split_examples

_UNET_STAGES = 4  # pooling stages of the SPEC's U-Net, for configs without a model section
_AUGMENTATIONS = ("flip", "rot90", "affine", "brightness_contrast")
_CACHE_ENTRIES = 4  # e.g. train + validation of two configs; bounded so tests don't pile up memory
_cache: collections.OrderedDict = collections.OrderedDict()
_cache_lock = threading.Lock()


def _process_info(process_index: int | None, process_count: int | None) -> tuple[int, int]:
    if process_index is None or process_count is None:
        import jax

        process_index = jax.process_index() if process_index is None else process_index
        process_count = jax.process_count() if process_count is None else process_count
    if not 0 <= process_index < process_count:
        raise ValueError(f"process_index {process_index} is not in [0, {process_count}).")
    return process_index, process_count


def _global_batch(config: Any, split: str) -> tuple[int, str]:
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}.")
    if split == "train":
        return int(config.batch_size), "config.batch_size"
    return int(config.eval_batch_size), "config.eval_batch_size"


def _check_config(config: Any, split: str, process_count: int, device_count: int | None) -> int:
    """Validates sizes; returns the host-local batch size."""
    size = int(config.data.image_size)
    stages = len(config.model.features) if "model" in config else _UNET_STAGES
    if size <= 0 or size % 2**stages:
        raise ValueError(
            f"config.data.image_size must be a positive multiple of {2**stages} "
            f"(the U-Net pools {stages} times), got {size}."
        )
    batch, name = _global_batch(config, split)
    if device_count is None:
        import jax

        device_count = jax.device_count()
    if batch <= 0 or batch % device_count:
        raise ValueError(
            f"{name}={batch} must be a positive multiple of the device count ({device_count}): "
            "the global batch is split evenly over all devices."
        )
    if batch % process_count:
        raise ValueError(
            f"{name}={batch} must be a multiple of the process count ({process_count}): "
            f"each host loads {name} / process_count examples."
        )
    return batch // process_count


def _host_shard(
    examples: Sequence[Example], seed: int, process_index: int, process_count: int
) -> np.ndarray:
    """Positions (into the sorted split) of this host's examples; fixed for the whole run."""
    order = np.random.default_rng([int(seed), 3]).permutation(len(examples))
    return order[process_index::process_count]


def _split(config: Any, split: str, validate: bool) -> list:
    """The examples of one split of the configured source (validated once per folder)."""
    return split_examples(config, get_examples(config.data, validate=validate))[split]


def steps_per_epoch(config: Any, *, process_count: int | None = None) -> int:
    """Training steps (batches) per epoch, the same on every host.

    ``floor(min host shard size / (config.batch_size / process_count))``: every host stops when the
    smallest shard runs out, so all hosts run the same number of steps.

    Args:
      config: the experiment config.
      process_count: number of hosts; default ``jax.process_count()``.

    Returns:
      The number of steps (>= 1).

    Raises:
      ValueError: the training split has fewer examples than one batch.
    """
    _, process_count = _process_info(0, process_count)
    n = len(_split(config, "train", validate=False))
    return _train_steps(n, int(config.batch_size), process_count)


def _train_steps(n_train: int, global_batch: int, process_count: int) -> int:
    local = global_batch // process_count
    steps = (n_train // process_count) // local if local > 0 else 0
    if steps == 0:
        raise ValueError(
            f"The training split has {n_train} examples, fewer than one batch per host "
            f"(config.batch_size={global_batch} over {process_count} process(es)); lower "
            "config.batch_size or use more data."
        )
    return steps


def num_eval_batches(config: Any, split: str = "validation") -> int:
    """Batches yielded by ``make_dataset(config, split)`` for an evaluation split, on every host.

    ``ceil(split size / config.eval_batch_size)`` (the same for any process count: each host's shard
    fits in that many host-local batches, and hosts that run out yield padding batches).

    Args:
      config: the experiment config.
      split: "validation", "test" (or "train", to evaluate on the training images without
        augmentation).

    Returns:
      The number of batches.
    """
    n = len(_split(config, split, validate=False))
    return math.ceil(n / int(config.eval_batch_size))


def _encoded_pair(image: tf.Tensor, mask: tf.Tensor, from_files: bool):
    if from_files:
        return tf.io.read_file(image), tf.io.read_file(mask)
    return image, mask


def _load_fn(data_config: Mapping[str, Any], from_files: bool):
    def load(image, mask):
        image, mask = _encoded_pair(image, mask, from_files)
        return preprocess_pair(decode_grayscale(image), decode_grayscale(mask), data_config)

    return load


def _cached_arrays(
    examples: Sequence[Example], data_config: Mapping[str, Any], key: tuple
) -> tuple[tf.Tensor, tf.Tensor]:
    """Decoded + equalised + resized (uint8) images and masks of ``examples``, kept in memory."""
    with _cache_lock:
        if key in _cache:
            _cache.move_to_end(key)
            return _cache[key]
    size = int(data_config["image_size"])
    images = np.empty((len(examples), size, size, 1), np.uint8)
    masks = np.empty((len(examples), size, size, 1), np.uint8)
    from_files = isinstance(examples[0].image, str)
    ds = tf.data.Dataset.from_tensor_slices(
        ([e.image for e in examples], [e.mask for e in examples])
    )
    ds = ds.map(_load_fn(data_config, from_files), tf.data.AUTOTUNE, deterministic=True)
    for i, (image, mask) in enumerate(ds.prefetch(tf.data.AUTOTUNE).as_numpy_iterator()):
        images[i], masks[i] = image, mask
    value = (tf.constant(images), tf.constant(masks))
    with _cache_lock:
        _cache[key] = value
        while len(_cache) > _CACHE_ENTRIES:
            _cache.popitem(last=False)
    return value


def _tf_dataset(
    config: Any,
    examples: Sequence[Example],
    shard: np.ndarray,
    order: np.ndarray,
    local_batch: int,
    train: bool,
    epoch: int,
) -> tf.data.Dataset:
    """The tf.data pipeline over ``shard[order]`` (positions into ``examples``), batched."""
    data = config.data
    positions = shard[order]
    ids = [examples[i].id for i in positions]
    if config.data.cache:
        key = (
            data.source,
            source_dir(data),
            tuple(examples[i].id for i in shard),
            int(data.image_size),
            data.resize_method,
            bool(data.equalize),
        )
        images, masks = _cached_arrays([examples[i] for i in shard], data, key)
        ds = tf.data.Dataset.from_tensor_slices((order.astype(np.int64), positions, ids))

        def load(index, position, example_id):
            return tf.gather(images, index), tf.gather(masks, index), position, example_id

    else:
        from_files = isinstance(examples[0].image, str)
        load_pair = _load_fn(data, from_files)
        ds = tf.data.Dataset.from_tensor_slices(
            (
                [examples[i].image for i in positions],
                [examples[i].mask for i in positions],
                positions,
                ids,
            )
        )

        def load(image, mask, position, example_id):
            image, mask = load_pair(image, mask)
            return image, mask, position, example_id

    augment = data.augment
    do_augment = train and any(bool(augment[name]) for name in _AUGMENTATIONS)
    epoch_seed = tf.constant([int(config.seed), int(epoch)], tf.int64)

    def finish(*args):
        image, mask, position, example_id = load(*args)
        image = tf.cast(image, tf.float32) / 255.0
        if do_augment:
            seed = tf.random.experimental.stateless_fold_in(epoch_seed, position)
            image, mask = augment_pair(image, mask, seed, augment)
        return {"image": image, "mask": tf.cast(mask[..., 0], tf.int32), "id": example_id}

    ds = ds.map(finish, tf.data.AUTOTUNE, deterministic=True)
    ds = ds.batch(local_batch, drop_remainder=train, num_parallel_calls=tf.data.AUTOTUNE)
    return ds.prefetch(tf.data.AUTOTUNE)


def _to_numpy(batch: dict[str, np.ndarray], local_batch: int) -> dict[str, np.ndarray]:
    n = len(batch["id"])
    out = {
        "image": batch["image"],
        "mask": batch["mask"],
        "valid": np.ones(n, bool),
        "id": np.array([i.decode() for i in batch["id"]], dtype=str),
    }
    if n < local_batch:
        out = _pad_batch(out, local_batch)
    return out


def _pad_batch(batch: dict[str, np.ndarray], local_batch: int) -> dict[str, np.ndarray]:
    pad = local_batch - len(batch["valid"])
    return {
        key: np.concatenate([value, np.zeros((pad,) + value.shape[1:], value.dtype)])
        for key, value in batch.items()
    }


def _padding_batch(local_batch: int, size: int) -> dict[str, np.ndarray]:
    return {
        "image": np.zeros((local_batch, size, size, 1), np.float32),
        "mask": np.zeros((local_batch, size, size), np.int32),
        "valid": np.zeros(local_batch, bool),
        "id": np.full(local_batch, "", dtype=str),
    }


def make_dataset(
    config: Any,
    split: str,
    *,
    epoch: int = 0,
    skip_batches: int = 0,
    process_index: int | None = None,
    process_count: int | None = None,
    device_count: int | None = None,
) -> Iterator[dict[str, np.ndarray]]:
    """One pass over a split as host-local numpy batches.

    Training (``split="train"``): one epoch, shuffled from (``config.seed``, ``epoch``), augmented,
    full batches only, `steps_per_epoch` batches minus ``skip_batches``. Evaluation (any other
    split): the host's shard in a fixed order, no augmentation, `num_eval_batches` batches with the
    tail padded by ``valid=False`` entries (zero image and mask, id "").

    Each batch (b = global batch // process_count, S = ``config.data.image_size``):

    - ``"image"``: float32 (b, S, S, 1) in [0, 1];
    - ``"mask"``: int32 (b, S, S) in {0, 1};
    - ``"valid"``: bool (b,), False for padding entries;
    - ``"id"``: str (b,), host-only (drop it before sending the batch to devices).

    Sources are validated (every file decoded) before the first batch; validation is cached per
    folder.

    Args:
      config: the experiment config (``seed``, ``batch_size``, ``eval_batch_size``, ``data.*``).
      split: "train", "validation" or "test".
      epoch: the epoch number (training order and augmentations depend on it).
      skip_batches: training batches of this epoch to skip, to resume mid-epoch.
      process_index: this host's index; default ``jax.process_index()``.
      process_count: the number of hosts; default ``jax.process_count()``.
      device_count: global device count the batch must divide; default ``jax.device_count()``.

    Returns:
      An iterator of batches (finite).

    Raises:
      ValueError: sizes that do not divide (the message names the config field), an image size that
        is not a multiple of 16, fewer training examples than one batch, or a source that fails
        validation.
    """
    process_index, process_count = _process_info(process_index, process_count)
    local_batch = _check_config(config, split, process_count, device_count)
    train = split == "train"
    examples = _split(config, split, validate=True)
    shard = _host_shard(examples, config.seed, process_index, process_count)
    size = int(config.data.image_size)
    if train:
        steps = _train_steps(len(examples), int(config.batch_size), process_count)
        rng = np.random.default_rng([int(config.seed), 4, int(epoch), process_index])
        order = rng.permutation(len(shard))[: steps * local_batch]
        order = order[max(int(skip_batches), 0) * local_batch :]
        num_batches = len(order) // local_batch
    else:
        order = np.arange(len(shard))
        num_batches = math.ceil(len(examples) / int(config.eval_batch_size))
    # A host whose shard is empty (tiny eval split, many hosts) still yields its padding batches.
    ds = (
        _tf_dataset(config, examples, shard, order, local_batch, train, epoch)
        if len(order)
        else None
    )

    def batches():
        yielded = 0
        for batch in ds.as_numpy_iterator() if ds is not None else ():
            yield _to_numpy(batch, local_batch)
            yielded += 1
        for _ in range(num_batches - yielded):
            yield _padding_batch(local_batch, size)

    return batches()
