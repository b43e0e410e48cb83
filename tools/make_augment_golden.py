"""Writes ``tests/data/augment_golden.npz``: augmented pairs and batches of the old switches.

``tests/test_data_augment_legacy.py`` checks that configs spelled with the switches of
``config.data.augment`` (``flip``, ``rot90``, ``affine``, ``brightness_contrast`` and their
``max_*`` ranges) still give exactly these arrays. The committed file was written by this script
at commit bbdd0c3, before the augmentation ops registry (``bts_jax.data.augment_ops``) existed,
when ``bts_jax.data.augment_pair`` was the one augmentation code path; rerunning it later writes
what the current code gives, so keep the committed file as the reference.

Contents:

* ``pair/image`` float32 (32, 32, 1), ``pair/mask`` uint8 (32, 32, 1): the input pair;
* ``<case>/image`` float32 (N, 32, 32, 1), ``<case>/mask`` uint8 (N, 32, 32, 1): ``augment_pair``
  of the pair under each case of `CASES` (switches and ranges), for the N example seeds
  ``stateless_fold_in([0, epoch], position)`` of `SEEDS`, as the pipeline folds them;
* ``batches/image`` float32 (3, 4, 32, 32, 1), ``batches/mask`` int32 (3, 4, 32, 32),
  ``batches/id``: the first 3 batches of epoch 1 of ``configs/test.py`` at batch 4 with every
  switch on, and ``digest/test_all/epoch_1`` the sha256 of all of that epoch's batches (ids,
  images, masks);
* ``digest/<config>/epoch_<e>``: the sha256 of every training batch of epochs 0 and 1 of
  ``configs/quickstart.py`` and ``configs/test.py`` as they are.

Rerun (a few seconds on one core)::

  .venv/bin/python tools/make_augment_golden.py [--out tests/data/augment_golden.npz]
"""

import argparse
import hashlib
import os

import numpy as np

from bts_jax.configs import quickstart
from bts_jax.configs import test as test_config
from bts_jax.data import augment_pair, make_dataset
from bts_jax.data._tf import tf

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SEEDS = [(epoch, position) for epoch in (0, 3) for position in (0, 1, 7, 40)]
OFF = {"flip": False, "rot90": False, "affine": False, "brightness_contrast": False}
CASES = {
    "none": {},
    "flip": {"flip": True},
    "rot90": {"rot90": True},
    "affine": {"affine": True},
    "affine_wide": {
        "affine": True,
        "max_rotate_deg": 30.0,
        "max_scale": 0.25,
        "max_translate": 0.1,
    },
    "brightness_contrast": {"brightness_contrast": True},
    "brightness_contrast_wide": {
        "brightness_contrast": True,
        "max_brightness": 0.3,
        "max_contrast": 0.4,
    },
    "all": {"flip": True, "rot90": True, "affine": True, "brightness_contrast": True},
}
ONE_HOST = {"process_index": 0, "process_count": 1}


def golden_pair(size: int = 32) -> tuple[np.ndarray, np.ndarray]:
    """A pair with structure in every direction (a tumour off-centre, a gradient, noise).

    Returns:
      (image float32 (size, size, 1) in [0, 1], mask uint8 (size, size, 1) in {0, 1}).
    """
    rng = np.random.default_rng(28)
    mask = np.zeros((size, size, 1), np.uint8)
    mask[5:15, 8:22] = 1
    mask[20:26, 3:7] = 1
    ramp = np.linspace(0.0, 0.3, size, dtype=np.float32)[None, :, None]
    image = mask * 0.6 + ramp + rng.uniform(0.0, 0.1, mask.shape)
    return image.astype(np.float32), mask


def example_seed(epoch: int, position: int) -> tf.Tensor:
    """The pipeline's seed of an example (config.seed 0): fold_in([0, epoch], position)."""
    epoch_seed = tf.constant([0, epoch], tf.int64)
    return tf.random.experimental.stateless_fold_in(epoch_seed, tf.constant(position, tf.int64))


def augment_settings(case: dict) -> dict:
    """``config.data.augment`` of configs/default.py with the case's switches and ranges."""
    augment = test_config.get_config().data.augment.to_dict()
    augment.update(OFF)
    augment.update(case)
    return augment


def batches_digest(batches) -> str:
    """sha256 over the ids, images and masks of every batch, in order."""
    digest = hashlib.sha256()
    for batch in batches:
        digest.update("|".join(batch["id"]).encode())
        digest.update(np.ascontiguousarray(batch["image"]).tobytes())
        digest.update(np.ascontiguousarray(batch["mask"]).tobytes())
    return digest.hexdigest()


def main() -> None:
    """Writes the golden file (see the module docstring)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=os.path.join(REPO, "tests", "data", "augment_golden.npz"))
    out = parser.parse_args().out
    image, mask = golden_pair()
    arrays = {"pair/image": image, "pair/mask": mask}
    for name, case in CASES.items():
        results = [
            augment_pair(
                tf.constant(image), tf.constant(mask), example_seed(e, p), augment_settings(case)
            )
            for e, p in SEEDS
        ]
        arrays[f"{name}/image"] = np.stack([r[0].numpy() for r in results])
        arrays[f"{name}/mask"] = np.stack([r[1].numpy() for r in results])
    config = test_config.get_config()
    config.batch_size = 4
    config.data.augment.update(flip=True, rot90=True, affine=True, brightness_contrast=True)
    batches = list(make_dataset(config, "train", epoch=1, **ONE_HOST))
    arrays["digest/test_all/epoch_1"] = np.array(batches_digest(batches))
    batches = batches[:3]  # the arrays of a few, to see a difference; the digest covers all
    arrays["batches/image"] = np.stack([b["image"] for b in batches])
    arrays["batches/mask"] = np.stack([b["mask"] for b in batches])
    arrays["batches/id"] = np.stack([b["id"] for b in batches])
    for name, module in (("quickstart", quickstart), ("test", test_config)):
        for epoch in (0, 1):
            epoch_batches = make_dataset(module.get_config(), "train", epoch=epoch, **ONE_HOST)
            arrays[f"digest/{name}/epoch_{epoch}"] = np.array(batches_digest(epoch_batches))
    np.savez_compressed(out, **arrays)
    print(f"wrote {out}: {len(arrays)} arrays")


if __name__ == "__main__":
    main()
