"""make_dataset and InputPipeline: shapes, determinism, resume, padding, sharding, errors, cache."""

import os

import numpy as np
import pytest

from bts_jax.configs import test as test_config
from bts_jax.data import (
    DataCache,
    InputPipeline,
    get_split_ids,
    make_dataset,
    num_eval_batches,
    steps_per_epoch,
)

# These tests check the pipeline on its own, as on hosts with one device each; the device-count
# check is tested explicitly below.
ONE_HOST = {"process_index": 0, "process_count": 1}


def _config(**data):
    config = test_config.get_config()  # bundled sample, 32x32, flips on
    config.batch_size = 4
    config.eval_batch_size = 4
    config.data.update(data)
    return config


def _same(a, b):
    assert len(a) == len(b)
    for x, y in zip(a, b, strict=True):
        assert x.keys() == y.keys()
        for key in x:
            np.testing.assert_array_equal(x[key], y[key])


def test_train_batches_shapes_dtypes_and_epoch():
    config = _config()
    batches = list(make_dataset(config, "train", **ONE_HOST))
    assert len(batches) == steps_per_epoch(config, process_count=1) == 48 // 4
    for b in batches:
        assert b["image"].shape == (4, 32, 32, 1) and b["image"].dtype == np.float32
        assert b["mask"].shape == (4, 32, 32) and b["mask"].dtype == np.int32
        assert b["valid"].dtype == bool and b["valid"].all()
        assert b["id"].shape == (4,) and b["id"].dtype.kind == "U"
        assert b["image"].min() >= 0.0 and b["image"].max() <= 1.0
        assert set(np.unique(b["mask"])) <= {0, 1}
    ids = np.concatenate([b["id"] for b in batches])
    assert sorted(ids) == sorted(get_split_ids(config)["train"])  # each train id once per epoch
    assert sum(b["mask"].sum() for b in batches) > 0  # tumours survive the 32x32 resize


@pytest.mark.slow
def test_same_seed_same_batches_other_epoch_or_seed_differs():
    config = _config()
    a = list(make_dataset(config, "train", epoch=3, **ONE_HOST))
    _same(a, list(make_dataset(config, "train", epoch=3, **ONE_HOST)))
    b = list(make_dataset(config, "train", epoch=4, **ONE_HOST))
    assert [list(x["id"]) for x in a] != [list(x["id"]) for x in b]
    config.seed = 7
    c = list(make_dataset(config, "train", epoch=3, **ONE_HOST))
    assert [list(x["id"]) for x in a] != [list(x["id"]) for x in c]


def test_cache_does_not_change_batches():
    config = _config(cache=True)
    config.data.augment.update(rot90=True, affine=True, brightness_contrast=True)
    cached = list(make_dataset(config, "train", epoch=1, **ONE_HOST))
    config.data.cache = False
    _same(cached, list(make_dataset(config, "train", epoch=1, **ONE_HOST)))


def test_skip_batches_resumes_mid_epoch():
    config = _config()
    config.data.augment.affine = True
    full = list(make_dataset(config, "train", epoch=2, **ONE_HOST))
    _same(full[5:], list(make_dataset(config, "train", epoch=2, skip_batches=5, **ONE_HOST)))
    assert list(make_dataset(config, "train", epoch=2, skip_batches=99, **ONE_HOST)) == []


def test_augmentation_is_on_for_train_only():
    config = _config()
    config.data.augment.update(flip=False)
    plain = {
        i: x
        for b in make_dataset(config, "train", epoch=0, **ONE_HOST)
        for i, x in zip(b["id"], b["image"], strict=True)
    }
    config.data.augment.update(flip=True, brightness_contrast=True)
    augmented = {
        i: x
        for b in make_dataset(config, "train", epoch=0, **ONE_HOST)
        for i, x in zip(b["id"], b["image"], strict=True)
    }
    assert sum(not np.array_equal(plain[i], augmented[i]) for i in plain) > len(plain) // 2
    evaluated = list(make_dataset(config, "validation", **ONE_HOST))
    config.data.augment.update(flip=False, brightness_contrast=False)
    _same(evaluated, list(make_dataset(config, "validation", **ONE_HOST)))


def test_eval_pads_the_last_batch_and_counts_each_image_once():
    config = _config()
    config.eval_batch_size = 5  # 12 validation ids -> 3 batches, the last with 2 real entries
    batches = list(make_dataset(config, "validation", **ONE_HOST))
    assert len(batches) == num_eval_batches(config) == 3
    assert [int(b["valid"].sum()) for b in batches] == [5, 5, 2]
    last = batches[-1]
    assert (last["id"][~last["valid"]] == "").all()
    assert last["image"][~last["valid"]].max() == 0 and last["mask"][~last["valid"]].max() == 0
    ids = np.concatenate([b["id"][b["valid"]] for b in batches])
    assert sorted(ids) == sorted(get_split_ids(config)["validation"])


def test_test_split_is_an_eval_split_of_exactly_the_test_ids():
    config = _config(test_fraction=0.15)  # the sample's 20 ids per type: 3 per type for test
    batches = list(make_dataset(config, "test", **ONE_HOST))
    assert len(batches) == num_eval_batches(config, "test") == 3
    ids = np.concatenate([b["id"][b["valid"]] for b in batches])
    assert sorted(ids, key=int) == get_split_ids(config)["test"] and len(ids) == 9
    config.data.test_fraction = 0.0
    assert list(make_dataset(config, "test", **ONE_HOST)) == []


@pytest.mark.slow
@pytest.mark.parametrize(("hosts", "eval_batch"), [(2, 4), (3, 6), (4, 8)])
def test_multi_host_shards_cover_everything_once_with_equal_counts(hosts, eval_batch):
    config = _config()
    config.batch_size = 4 * hosts if hosts != 3 else 6
    config.eval_batch_size = eval_batch
    evals = [
        list(make_dataset(config, "validation", process_index=p, process_count=hosts))
        for p in range(hosts)
    ]
    assert len({len(e) for e in evals}) == 1  # every host runs the same number of eval steps
    assert len(evals[0]) == num_eval_batches(config)
    ids = [i for e in evals for b in e for i in b["id"][b["valid"]]]
    assert sorted(ids) == sorted(get_split_ids(config)["validation"])  # exactly once overall
    for e in evals:
        assert all(b["image"].shape[0] == eval_batch // hosts for b in e)
    trains = [
        list(make_dataset(config, "train", epoch=1, process_index=p, process_count=hosts))
        for p in range(hosts)
    ]
    assert len({len(t) for t in trains}) == 1
    assert len(trains[0]) == steps_per_epoch(config, process_count=hosts)
    train_ids = [i for t in trains for b in t for i in b["id"]]
    assert len(train_ids) == len(set(train_ids))  # hosts read disjoint shards


@pytest.mark.slow
def test_augmentation_of_an_example_does_not_depend_on_the_host_count():
    config = _config()
    config.data.augment.update(rot90=True, brightness_contrast=True)
    config.batch_size = 4
    one = {
        i: x
        for b in make_dataset(config, "train", **ONE_HOST)
        for i, x in zip(b["id"], b["image"], strict=True)
    }
    two = {
        i: x
        for b in make_dataset(config, "train", process_index=1, process_count=2)
        for i, x in zip(b["id"], b["image"], strict=True)
    }
    assert two and all(np.array_equal(one[i], x) for i, x in two.items() if i in one)


def test_pad_mode_and_mixed_sizes():
    config = _config(resize_method="pad", image_size=64)
    batches = list(make_dataset(config, "train", **ONE_HOST))
    small = [b["image"][k] for b in batches for k, i in enumerate(b["id"]) if i in {"1203", "1204"}]
    assert small  # 256x256 slices are shrunk to 64 like the 512 ones (letterbox, square: no border)
    assert all(x.shape == (64, 64, 1) for x in small)


def test_errors_name_the_setting():
    config = _config()
    # The device count and the image size are checked with the whole config, at set-up:
    # tests/test_config_checks.py.
    with pytest.raises(ValueError, match=r"config\.eval_batch_size=4 .*process count \(3\)"):
        make_dataset(config, "validation", process_index=0, process_count=3)
    config.batch_size = 52
    with pytest.raises(ValueError, match=r"48 examples, fewer than one batch.*config\.batch_size"):
        make_dataset(config, "train", **ONE_HOST)
    with pytest.raises(ValueError, match="split must be"):
        make_dataset(_config(), "testing", **ONE_HOST)


# ----------------------------------------------------------------------------- one pipeline per run


@pytest.mark.slow
def test_one_run_pipeline_yields_exactly_the_per_epoch_batches():
    config = _config()
    config.num_epochs = 3
    config.data.augment.update(rot90=True, brightness_contrast=True)
    pipeline = InputPipeline(config, **ONE_HOST)
    steps = pipeline.steps_per_epoch
    run = list(pipeline.train_batches(start_step=0))
    per_epoch = [b for e in range(3) for b in make_dataset(config, "train", epoch=e, **ONE_HOST)]
    assert len(run) == 3 * steps
    _same(run, per_epoch)
    # A run resumed mid-epoch (step steps + 5) sees the very batches it would have seen.
    _same(list(pipeline.train_batches(start_step=steps + 5)), per_epoch[steps + 5 :])
    assert list(pipeline.train_batches(start_step=3 * steps)) == []


def test_eval_pipeline_is_built_once_and_reiterated():
    config = _config()
    pipeline = InputPipeline(config, **ONE_HOST)
    first = list(pipeline.eval_batches("validation"))
    graph = pipeline._eval_datasets["validation"]
    _same(first, list(pipeline.eval_batches("validation")))
    assert pipeline._eval_datasets["validation"] is graph
    _same(first, list(make_dataset(config, "validation", **ONE_HOST)))


@pytest.mark.slow
def test_run_cache_decodes_once_and_sees_files_rewritten_in_place(tmp_path):
    from PIL import Image

    from tests.test_data_sources import make_folder

    folder = make_folder(tmp_path / "data", ids=[str(i) for i in range(1, 13)], size=(32, 32))
    config = _config(source="folder", data_dir=str(folder), val_fraction=0.25)
    cache = DataCache()
    first = list(make_dataset(config, "validation", cache=cache, **ONE_HOST))
    entries = len(cache)
    again = list(make_dataset(config, "validation", cache=cache, **ONE_HOST))
    _same(first, again)
    assert len(cache) == entries  # nothing decoded or validated twice
    # Rewrite one validation image in place (same name): the cache must not serve old pixels.
    image_id = first[0]["id"][0]
    path = folder / "images" / f"{image_id}.png"
    Image.fromarray(np.full((32, 32), 7, np.uint8)).save(path)
    os.utime(path, ns=(1, 1))  # a different mtime even on coarse-grained file systems
    changed = list(make_dataset(config, "validation", cache=cache, **ONE_HOST))
    row = list(changed[0]["id"]).index(image_id)
    assert not np.array_equal(changed[0]["image"][row], first[0]["image"][0])
    # Equalising a constant image leaves it constant.
    assert len(np.unique(changed[0]["image"][row])) == 1


def test_no_module_level_caches_remain():
    import bts_jax.data.pipeline as pipeline_module
    import bts_jax.data.sources as sources_module

    for module in (pipeline_module, sources_module):
        for name, value in vars(module).items():
            assert not hasattr(value, "cache_clear"), f"{module.__name__}.{name} is an lru_cache"
            assert not isinstance(value, dict | list) or name.isupper() or name.startswith("__"), (
                f"{module.__name__}.{name} is module-level mutable state"
            )
