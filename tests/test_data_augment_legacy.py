"""Old configs keep their augmentation, bit for bit: golden arrays from before the ops registry.

tests/data/augment_golden.npz was written by tools/make_augment_golden.py at commit bbdd0c3,
when ``augment_pair`` with the switches of ``config.data.augment`` was the only code path.
"""

import json
import os
import sys

import numpy as np
import pytest

from bts_jax import workdir as workdir_lib
from bts_jax.configs import default, quickstart
from bts_jax.configs import test as test_config
from bts_jax.data import augment_pair, augmentations_of, make_dataset, parse_ops
from bts_jax.data._tf import tf
from bts_jax.data.augment_config import LEGACY_AUGMENT, legacy_augmentations
from bts_jax.data.augment_ops import apply_ops

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(REPO, "tools"))
import make_augment_golden as golden  # noqa: E402

ONE_HOST = {"process_index": 0, "process_count": 1}


@pytest.fixture(scope="module")
def gold():
    with np.load(os.path.join(REPO, "tests", "data", "augment_golden.npz")) as f:
        return dict(f)


@pytest.mark.parametrize("case", sorted(golden.CASES))
def test_old_switches_give_the_golden_pairs_through_both_paths(gold, case):
    image, mask = tf.constant(gold["pair/image"]), tf.constant(gold["pair/mask"])
    settings = golden.augment_settings(golden.CASES[case])
    ops = parse_ops(legacy_augmentations(settings))
    for k, (epoch, position) in enumerate(golden.SEEDS):
        seed = golden.example_seed(epoch, position)
        for out_image, out_mask in (
            augment_pair(image, mask, seed, settings),  # the old entry point
            apply_ops(image, mask, seed, ops),  # the ops string the switches map onto
        ):
            np.testing.assert_array_equal(out_image.numpy(), gold[f"{case}/image"][k])
            np.testing.assert_array_equal(out_mask.numpy(), gold[f"{case}/mask"][k])


def test_old_switches_map_onto_the_ops_string():
    assert legacy_augmentations(LEGACY_AUGMENT) == "flip"
    every = {**LEGACY_AUGMENT, "rot90": True, "affine": True, "brightness_contrast": True}
    assert legacy_augmentations(every) == (
        "flip|rot90|affine(rotate=10.0,scale=0.1,translate=0.05)"
        "|brightness_contrast(brightness=0.1,contrast=0.1)"
    )
    assert legacy_augmentations({"flip": False}) == ""
    # The bare names take the old defaults as their own: the same ops, the same draws.
    assert [op.stream for op in parse_ops("flip|rot90|affine|brightness_contrast")] == [1, 2, 3, 4]


def test_which_spelling_decides():
    data = default.get_config().data
    assert augmentations_of(data)[0] == "flip"  # the default: both spellings agree
    data.augmentations = "rot90|noise(0.1)"  # the string, switches at their defaults
    assert augmentations_of(data)[0] == "rot90|noise(0.1)"
    data = default.get_config().data
    data.augment.update(flip=False, rot90=True)  # switches changed, string at its default
    assert augmentations_of(data) == (
        "rot90",
        "config.data.augment (mapped onto config.data.augmentations='rot90')",
    )
    # A config.json from before the string: only switches.
    old_json = {"augment": dict(LEGACY_AUGMENT, affine=True)}
    assert augmentations_of(old_json)[0] == ("flip|affine(rotate=10.0,scale=0.1,translate=0.05)")
    data.augmentations = "gamma"
    with pytest.raises(ValueError, match=r"both set the augmentation.*'rot90'"):
        augmentations_of(data)
    data = default.get_config().data
    data.augment.flip_lr = True
    with pytest.raises(ValueError, match=r"config\.data\.augment\.flip_lr: unknown key"):
        augmentations_of(data)


def test_old_switches_give_the_golden_batches(gold):
    config = test_config.get_config()
    config.batch_size = 4
    config.data.augment.update(flip=True, rot90=True, affine=True, brightness_contrast=True)
    batches = list(make_dataset(config, "train", epoch=1, **ONE_HOST))
    assert golden.batches_digest(batches) == gold["digest/test_all/epoch_1"]
    for k, batch in enumerate(batches[:3]):
        np.testing.assert_array_equal(batch["image"], gold["batches/image"][k])
        np.testing.assert_array_equal(batch["mask"], gold["batches/mask"][k])
        np.testing.assert_array_equal(batch["id"], gold["batches/id"][k])
    # The same settings spelled as an ops string.
    config = test_config.get_config()
    config.batch_size = 4
    config.data.augmentations = "flip|rot90|affine|brightness_contrast"
    batches = make_dataset(config, "train", epoch=1, **ONE_HOST)
    assert golden.batches_digest(batches) == gold["digest/test_all/epoch_1"]


@pytest.mark.slow
@pytest.mark.parametrize(("name", "module"), [("quickstart", quickstart), ("test", test_config)])
def test_quickstart_and_test_configs_train_on_the_very_same_batches(gold, name, module):
    config = module.get_config()
    assert config.data.augmentations == "flip"
    for epoch in (0, 1):
        batches = make_dataset(config, "train", epoch=epoch, **ONE_HOST)
        assert golden.batches_digest(batches) == gold[f"digest/{name}/epoch_{epoch}"]


def test_a_kept_runs_config_json_means_what_it_meant(tmp_path):
    # A cell of the kept quickstart ablation, written before config.data.augmentations existed.
    kept = os.path.join(REPO, "docs", "results", "quickstart_ablation", "unet", "seed_0")
    saved = workdir_lib.load_config(kept)
    assert "augmentations" not in saved.data
    assert augmentations_of(saved.data) == (
        "flip",
        "config.data.augment (mapped onto config.data.augmentations='flip')",
    )
    # Resuming such a workdir with today's config: the field it lacks is implied, not a change.
    config = quickstart.get_config()
    old = config.to_dict()
    del old["data"]["augmentations"]
    with open(tmp_path / "config.json", "w") as f:
        json.dump(old, f)
    assert workdir_lib.check_config(config, tmp_path, checkpoint_step=6) == []
