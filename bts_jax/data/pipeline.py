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

Every host yields the same number of batches (collectives would hang otherwise; see
`bts_jax.data.batching`), evaluation batches padded with ``valid=False`` entries so each image is
counted exactly once.

One pipeline per run: `InputPipeline` builds the training ``tf.data`` graph once for all the run's
remaining epochs (the epoch is a column of the index table, so each epoch's order and augmentations
are the ones `make_dataset` gives for that epoch alone), and each evaluation split's graph once, re-
iterated at every evaluation. Starting a new graph per epoch cost up to ~2 s on two busy cores.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import numpy as np

from bts_jax.data._tf import tf
from bts_jax.data.augment_config import config_ops
from bts_jax.data.augment_ops import apply_ops
from bts_jax.data.batching import (
    check_process,
    host_shard,
    local_batch_size,
    num_eval_batches,
    train_steps,
)
from bts_jax.data.cache import DataCache, files_signature
from bts_jax.data.examples import get_examples
from bts_jax.data.preprocessing import decode_grayscale, preprocess_pair
from bts_jax.data.sources import Example, source_dir
from bts_jax.data.splits import SPLITS, split_examples


def _encoded_pair(image: tf.Tensor, mask: tf.Tensor, from_files: bool):
    if from_files:
        return tf.io.read_file(image), tf.io.read_file(mask)
    return image, mask


def _load_fn(data_config: Mapping[str, Any], from_files: bool):
    def load(image, mask):
        image, mask = _encoded_pair(image, mask, from_files)
        return preprocess_pair(decode_grayscale(image), decode_grayscale(mask), data_config)

    return load


def _decode_all(
    examples: Sequence[Example], data_config: Mapping[str, Any]
) -> tuple[tf.Tensor, tf.Tensor]:
    """Decoded + equalised + resized (uint8) images and masks (N, S, S, 1) of ``examples``."""
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
    return tf.constant(images), tf.constant(masks)


def _pixels_key(examples: Sequence[Example], data: Mapping[str, Any]) -> tuple:
    files = [path for e in examples for path in (e.image, e.mask) if isinstance(path, str)]
    return (
        "pixels",
        data["source"],
        source_dir(data) if data["source"] != "tfds" else data["data_dir"],
        tuple(e.id for e in examples),
        files_signature(files),
        int(data["image_size"]),
        data["resize_method"],
        bool(data["equalize"]),
    )


class InputPipeline:
    """This host's input for one run: each split's tf.data graph built once and reused.

    Example::

        pipeline = InputPipeline(config, process_index=jax.process_index(),
                                 process_count=jax.process_count())
        for batch in pipeline.train_batches(start_step=0): ...   # every step of the run
        for batch in pipeline.eval_batches("validation"): ...    # one pass, any number of times

    Attributes:
      config: the experiment config.
      process_index: this host's index.
      process_count: the number of hosts.
      cache: the run's `DataCache` (validated folder listing, decoded pixels).
    """

    def __init__(
        self,
        config: Any,
        *,
        process_index: int,
        process_count: int,
        cache: DataCache | None = None,
    ):
        check_process(process_index, process_count)
        self.config = config
        self.process_index = int(process_index)
        self.process_count = int(process_count)
        self.cache = DataCache() if cache is None else cache
        self._eval_datasets: dict[str, tf.data.Dataset | None] = {}

    def source_examples(self) -> list[Example]:
        """Every example of the validated source, before any split (sorted by id)."""
        return list(get_examples(self.config.data, validate=True, cache=self.cache))

    def examples(self, split: str) -> list[Example]:
        """The split's examples of a validated source (each file checked once per cache).

        Args:
          split: "train", "validation" or another split of `SPLITS`.

        Returns:
          The split's examples, sorted by id.
        """
        if split not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS}, got {split!r}.")
        examples = get_examples(self.config.data, validate=True, cache=self.cache)
        return split_examples(self.config, examples)[split]

    @property
    def steps_per_epoch(self) -> int:
        """Training steps per epoch on every host (see `steps_per_epoch`)."""
        return train_steps(
            len(self.examples("train")), int(self.config.batch_size), self.process_count
        )

    def train_batches(self, *, start_step: int = 0) -> Iterator[dict[str, np.ndarray]]:
        """Training batches from global step ``start_step`` to the end of the run, in one graph.

        Args:
          start_step: optimiser steps already done; the epoch and the batches to skip within it
            follow from it, so a resumed run sees exactly the batches it would have seen.

        Returns:
          An iterator of host-local batches (see `make_dataset`), ``steps_per_epoch *
          config.num_epochs - start_step`` of them.
        """
        first_epoch, skip = divmod(int(start_step), self.steps_per_epoch)
        return self.train_epochs(range(first_epoch, int(self.config.num_epochs)), skip)

    def train_epochs(
        self, epochs: Sequence[int], skip_batches: int = 0
    ) -> Iterator[dict[str, np.ndarray]]:
        """Training batches of the given epochs, one after the other, in one graph.

        Args:
          epochs: epoch numbers (each epoch's order and augmentations depend on it).
          skip_batches: batches of the first epoch to skip, to resume mid-epoch.

        Returns:
          An iterator of host-local batches.
        """
        config = self.config
        local_batch = local_batch_size(config, "train", self.process_count)
        examples = self.examples("train")
        steps = train_steps(len(examples), int(config.batch_size), self.process_count)
        shard = host_shard(examples, config.seed, self.process_index, self.process_count)
        per_epoch = steps * local_batch
        orders, epoch_column = [np.zeros(0, np.int64)], [np.zeros(0, np.int64)]
        for epoch in epochs:
            rng = np.random.default_rng([int(config.seed), 4, int(epoch), self.process_index])
            orders.append(rng.permutation(len(shard))[:per_epoch])
            epoch_column.append(np.full(per_epoch, int(epoch), np.int64))
        start = max(int(skip_batches), 0) * local_batch
        order = np.concatenate(orders)[start:]
        epoch_column = np.concatenate(epoch_column)[start:]
        if not len(order):
            return iter(())
        ds = self._dataset(examples, shard, order, epoch_column, local_batch, train=True)
        return (_to_numpy(batch, local_batch) for batch in ds.as_numpy_iterator())

    def eval_batches(
        self, split: str = "validation", allow_empty: bool = False
    ) -> Iterator[dict[str, np.ndarray]]:
        """One pass over an evaluation split, padded to `num_eval_batches` batches on every host.

        Args:
          split: "validation", "test", or "train" (the training images without augmentation).
          allow_empty: give no batch for a split without images instead of raising.

        Returns:
          An iterator of host-local batches; padding entries have ``valid=False``.

        Raises:
          ValueError: the split holds no image (unless ``allow_empty``); the message gives
            every split's size and the settings that made them.
        """
        config = self.config
        local_batch = local_batch_size(config, split, self.process_count)
        examples = self.examples(split)
        if not examples:
            if allow_empty:
                return iter(())
            raise ValueError(self._empty_split_message(split))
        if split not in self._eval_datasets:
            shard = host_shard(examples, config.seed, self.process_index, self.process_count)
            order = np.arange(len(shard))
            self._eval_datasets[split] = (
                self._dataset(examples, shard, order, None, local_batch, train=False)
                if len(order)
                else None  # a host whose shard is empty (tiny split, many hosts) only pads
            )
        ds = self._eval_datasets[split]
        num_batches = num_eval_batches(config, split, num_examples=len(examples))
        size = int(config.data.image_size)

        def batches():
            yielded = 0
            for batch in ds.as_numpy_iterator() if ds is not None else ():
                yield _to_numpy(batch, local_batch)
                yielded += 1
            for _ in range(num_batches - yielded):
                yield _padding_batch(local_batch, size)

        return batches()

    def _empty_split_message(self, split: str) -> str:
        sizes = ", ".join(f"{name} {len(self.examples(name))}" for name in SPLITS)
        data = self.config.data
        return (
            f"Nothing to evaluate: the {split} split holds 0 of the "
            f"{len(self.source_examples())} images of config.data.source={data.source!r} "
            f"({sizes}; config.data.val_fraction={data.val_fraction}, "
            f"config.data.test_fraction={data.get('test_fraction', 0.0)}, "
            f"config.eval_batch_size={self.config.eval_batch_size}). Evaluate another split, or "
            "split the data so that this one holds images."
        )

    def _dataset(
        self,
        examples: Sequence[Example],
        shard: np.ndarray,
        order: np.ndarray,
        epochs: np.ndarray | None,
        local_batch: int,
        train: bool,
    ) -> tf.data.Dataset:
        """The tf.data graph over ``shard[order]`` (positions into ``examples``), batched."""
        config = self.config
        data = config.data
        positions = shard[order]
        ids = [examples[i].id for i in positions]
        epochs = np.zeros(len(order), np.int64) if epochs is None else epochs
        if data.cache:
            shard_examples = [examples[i] for i in shard]
            images, masks = self.cache.get(
                _pixels_key(shard_examples, data), lambda: _decode_all(shard_examples, data)
            )
            ds = tf.data.Dataset.from_tensor_slices(
                (order.astype(np.int64), positions, ids, epochs)
            )

            def load(index, position, example_id, epoch):
                return (
                    tf.gather(images, index),
                    tf.gather(masks, index),
                    position,
                    example_id,
                    epoch,
                )

        else:
            from_files = isinstance(examples[0].image, str)
            load_pair = _load_fn(data, from_files)
            ds = tf.data.Dataset.from_tensor_slices(
                (
                    [examples[i].image for i in positions],
                    [examples[i].mask for i in positions],
                    positions,
                    ids,
                    epochs,
                )
            )

            def load(image, mask, position, example_id, epoch):
                image, mask = load_pair(image, mask)
                return image, mask, position, example_id, epoch

        # config.data.augmentations (or the old switches): augmentation runs when it lists ops.
        ops = config_ops(data) if train else []
        seed = int(config.seed)

        def finish(*args):
            image, mask, position, example_id, epoch = load(*args)
            image = tf.cast(image, tf.float32) / 255.0
            if ops:
                # Drawn from (seed, epoch, position): independent of hosts, batches and caching.
                epoch_seed = tf.stack([tf.constant(seed, tf.int64), epoch])
                example_seed = tf.random.experimental.stateless_fold_in(epoch_seed, position)
                image, mask = apply_ops(image, mask, example_seed, ops)
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
    process_index: int,
    process_count: int,
    epoch: int = 0,
    skip_batches: int = 0,
    cache: DataCache | None = None,
) -> Iterator[dict[str, np.ndarray]]:
    """One pass over a split as host-local numpy batches (a one-off `InputPipeline`).

    Training (``split="train"``): one epoch, shuffled from (``config.seed``, ``epoch``), augmented,
    full batches only, `steps_per_epoch` batches minus ``skip_batches``. Evaluation (any other
    split): the host's shard in a fixed order, no augmentation, `num_eval_batches` batches with the
    tail padded by ``valid=False`` entries (zero image and mask, id "").

    Each batch (b = global batch // process_count, S = ``config.data.image_size``):

    - ``"image"``: float32 (b, S, S, 1) in [0, 1];
    - ``"mask"``: int32 (b, S, S) in {0, 1};
    - ``"valid"``: bool (b,), False for padding entries;
    - ``"id"``: str (b,), host-only (drop it before sending the batch to devices).

    Sources are validated (every file decoded) before the first batch. A training run builds one
    `InputPipeline` instead, so each split's graph is built once for the whole run.

    Args:
      config: the experiment config (``seed``, ``batch_size``, ``eval_batch_size``, ``data.*``).
      split: "train", or an evaluation split ("validation", "test").
      process_index: this host's index (``jax.process_index()``).
      process_count: the number of hosts (``jax.process_count()``).
      epoch: the epoch number (training order and augmentations depend on it).
      skip_batches: training batches of this epoch to skip, to resume mid-epoch.
      cache: a `DataCache` to share validation and decoded pixels between calls.

    Returns:
      An iterator of batches (finite; none for an evaluation split without images).

    Raises:
      ValueError: a global batch the hosts cannot share (the message names the config field), fewer
        training examples than one batch, or a source that fails validation.
    """
    pipeline = InputPipeline(
        config, process_index=process_index, process_count=process_count, cache=cache
    )
    if split != "train":
        # A split without images gives no batch here; the evaluations say why they cannot run.
        return pipeline.eval_batches(split, allow_empty=True)
    return pipeline.train_epochs([int(epoch)], skip_batches)
