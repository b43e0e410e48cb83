"""Id splits: disjoint, contiguous per tumour type, deterministic, gaps, k-fold, subsets, test."""

import itertools
import json

import pytest

from bts_jax.configs import default
from bts_jax.configs import test as test_config
from bts_jax.data import get_examples, get_split_ids, split_examples
from bts_jax.data.sources import Example
from bts_jax.data.splits import SPLIT_SETTINGS, SPLITS
from bts_jax.workdir import write_split_file


def _config(**data):
    config = test_config.get_config()  # test_fraction=0: the two-way split
    config.data.update(data)
    return config


def _synthetic(n_per_type=(50, 80, 30)):
    """Ids 1..N, types in interleaved runs like the figshare ids."""
    examples, next_id = [], 1
    for label, n in enumerate(n_per_type, start=1):
        for _ in range(n):
            examples.append(Example(str(next_id), label, "", ""))
            next_id += 1
    return examples


def _rank_in_type(examples):
    ranks = {}
    for label in {e.label for e in examples}:
        ids = sorted((e.id for e in examples if e.label == label), key=int)
        ranks.update({i: (label, r) for r, i in enumerate(ids)})
    return ranks


def test_blocked_default_on_sample_validates_last_block_per_type():
    split = get_split_ids(_config())
    assert split["validation"] == [
        "485", "486", "487", "488", "1542", "1543", "1544", "1545", "2604", "2605", "2606", "2607",
    ]  # fmt: skip
    assert len(split["train"]) == 48
    assert not set(split["train"]) & set(split["validation"])


@pytest.mark.parametrize("gap", [0, 3])
def test_blocked_is_contiguous_per_type_and_respects_gap(gap):
    examples = _synthetic()
    config = _config(split_gap=gap, val_fraction=0.2)
    split = split_examples(config, examples)
    ranks = _rank_in_type(examples)
    for label, n in zip((1, 2, 3), (50, 80, 30), strict=True):
        val = sorted(ranks[e.id][1] for e in split["validation"] if e.label == label)
        train = sorted(ranks[e.id][1] for e in split["train"] if e.label == label)
        n_val = round(0.2 * n)
        assert val == list(range(n - n_val, n))  # the last block of the type
        assert train == list(range(0, n - n_val - gap))  # everything before it, minus the gap
    assert not {e.id for e in split["train"]} & {e.id for e in split["validation"]}


def test_random_split_is_seeded_disjoint_and_mixes_blocks():
    examples = _synthetic()
    a = split_examples(_config(split_method="random"), examples)
    b = split_examples(_config(split_method="random"), examples)
    config = _config(split_method="random")
    config.seed = 1
    c = split_examples(config, examples)
    ids = lambda s: [e.id for e in s["validation"]]  # noqa: E731
    assert ids(a) == ids(b) and ids(a) != ids(c)
    assert len(a["validation"]) == 32 and len(a["train"]) == 128
    assert not {e.id for e in a["train"]} & set(ids(a))
    # Per slice: validation ids are scattered, not one block per type.
    val = sorted(int(i) for i in ids(a))
    assert max(val) - min(val) > 100


def test_kfold_folds_partition_each_type_into_contiguous_blocks():
    examples = _synthetic()
    ranks = _rank_in_type(examples)
    seen = []
    for fold in range(5):
        split = split_examples(_config(split_method="kfold", num_folds=5, fold=fold), examples)
        val_ids = {e.id for e in split["validation"]}
        assert not val_ids & {e.id for e in split["train"]}
        assert len(val_ids) + len(split["train"]) == len(examples)
        for label in (1, 2, 3):
            r = sorted(ranks[i][1] for i in val_ids if ranks[i][0] == label)
            assert r == list(range(r[0], r[-1] + 1))  # contiguous
        seen.extend(val_ids)
    assert sorted(seen, key=int) == [e.id for e in examples]  # each id validated exactly once
    gap = split_examples(_config(split_method="kfold", fold=2, split_gap=2), examples)
    assert len(gap["train"]) == len(examples) - len(gap["validation"]) - 3 * 4


def test_subset_is_proportional_blocked_and_seeded():
    examples = _synthetic((200, 400, 100))
    config = _config(subset_size=70)
    a = split_examples(config, examples)
    b = split_examples(config, examples)
    chosen = a["train"] + a["validation"]
    assert len(chosen) == 70
    assert [sum(e.label == t for e in chosen) for t in (1, 2, 3)] == [20, 40, 10]
    assert [e.id for e in a["train"]] == [e.id for e in b["train"]]
    # Runs of consecutive ids (10 per type at most), spread over each type's range.
    type2 = sorted(int(e.id) for e in chosen if e.label == 2)
    runs = 1 + sum(1 for x, y in zip(type2, type2[1:], strict=False) if y != x + 1)
    assert runs <= 10 and type2[-1] - type2[0] > 300
    config.seed = 5
    c = split_examples(config, examples)
    assert [e.id for e in c["train"]] != [e.id for e in a["train"]]
    random_subset = split_examples(_config(subset_size=70, split_method="random"), examples)
    assert len(random_subset["train"]) + len(random_subset["validation"]) == 70


def test_write_split_file(tmp_path):
    config = _config()
    path = write_split_file(config, tmp_path / "run")
    with open(path) as f:
        content = json.load(f)
    assert content["train"] == get_split_ids(config)["train"]
    assert content["validation"] == get_split_ids(config)["validation"]
    assert content["settings"]["split_method"] == "blocked"
    assert len(content["train"]) + len(content["validation"]) == len(get_examples(config.data))


def test_bad_split_settings():
    with pytest.raises(ValueError, match="split_method"):
        get_split_ids(_config(split_method="patient"))
    with pytest.raises(ValueError, match="val_fraction"):
        get_split_ids(_config(val_fraction=1.0))
    with pytest.raises(ValueError, match="fold"):
        get_split_ids(_config(split_method="kfold", fold=5))


# ----------------------------------------------------------------------------- three-way split

TYPES = (60, 80, 40)  # per type: test 9, 12, 6 and validation 12, 16, 8 at the default fractions


def _default(**data):
    config = default.get_config()  # test_fraction=0.15, val_fraction=0.2
    config.data.update(data)
    return config


def _ids(examples):
    return [e.id for e in examples]


def test_splits_and_split_settings_are_public():
    assert SPLITS == ("train", "validation", "test")
    assert "test_fraction" in SPLIT_SETTINGS and "val_fraction" in SPLIT_SETTINGS
    assert _default().data.test_fraction == 0.15


@pytest.mark.parametrize("gap", [0, 2])
def test_blocked_three_way_blocks_are_contiguous_in_order_with_gaps(gap):
    examples = _synthetic(TYPES)
    split = split_examples(_default(split_gap=gap), examples)
    ranks = _rank_in_type(examples)
    for label, n, n_test, n_val in zip((1, 2, 3), TYPES, (9, 12, 6), (12, 16, 8), strict=True):

        def block(name, label=label):
            return sorted(ranks[e.id][1] for e in split[name] if e.label == label)

        test_start = n - n_test
        val_start = test_start - gap - n_val
        assert block("test") == list(range(test_start, n))
        assert block("validation") == list(range(val_start, test_start - gap))
        assert block("train") == list(range(0, val_start - gap))
    names = [set(_ids(split[name])) for name in SPLITS]
    for a, b in itertools.combinations(names, 2):
        assert not a & b
    assert sum(map(len, names)) == sum(TYPES) - 3 * 2 * gap  # two gaps per type


def test_test_block_is_the_same_for_every_seed_fold_and_method():
    examples = _synthetic(TYPES)
    reference = _ids(split_examples(_default(), examples)["test"])
    assert len(reference) == 9 + 12 + 6
    variants = [dict(split_method="blocked", val_fraction=0.3, split_gap=3)]
    variants += [dict(split_method="random")]
    variants += [dict(split_method="kfold", num_folds=4, fold=f) for f in range(4)]
    for seed, settings in itertools.product((0, 1, 7), variants):
        config = _default(**settings)
        config.seed = seed
        split = split_examples(config, examples)
        assert _ids(split["test"]) == reference, (seed, settings)
        assert not set(reference) & set(_ids(split["train"]) + _ids(split["validation"]))


def test_random_three_way_splits_the_rest_per_slice():
    examples = _synthetic(TYPES)
    config = _default(split_method="random")
    split = split_examples(config, examples)
    blocked = split_examples(_default(), examples)
    assert _ids(split["test"]) == _ids(blocked["test"])
    assert len(split["validation"]) == round(0.2 * sum(TYPES)) == 36
    assert len(split["train"]) == sum(TYPES) - 36 - 27
    assert not set(_ids(split["train"])) & set(_ids(split["validation"]))
    val = sorted(int(i) for i in _ids(split["validation"]))
    assert max(val) - min(val) > 100  # scattered: per slice, not by blocks
    config.seed = 1
    assert _ids(split_examples(config, examples)["validation"]) != _ids(split["validation"])


def test_kfold_three_way_folds_rotate_over_the_ids_before_the_test_block():
    examples = _synthetic(TYPES)
    ranks = _rank_in_type(examples)
    test_ids = set(_ids(split_examples(_default(), examples)["test"]))
    validated = []
    for fold in range(4):
        split = split_examples(_default(split_method="kfold", num_folds=4, fold=fold), examples)
        val_ids, train_ids = set(_ids(split["validation"])), set(_ids(split["train"]))
        assert not val_ids & train_ids and not (val_ids | train_ids) & test_ids
        assert len(val_ids | train_ids | test_ids) == len(examples)
        for label in (1, 2, 3):
            r = sorted(ranks[i][1] for i in val_ids if ranks[i][0] == label)
            assert r == list(range(r[0], r[-1] + 1))
        validated.extend(val_ids)
    rest = sorted((e.id for e in examples if e.id not in test_ids), key=int)
    assert sorted(validated, key=int) == rest  # each id before the test block validated once


def test_zero_test_fraction_is_the_two_way_split_and_old_configs_read_it_as_zero():
    examples = _synthetic(TYPES)
    for method in ("blocked", "random", "kfold"):
        split = split_examples(_default(split_method=method, test_fraction=0.0), examples)
        assert split["test"] == []
        assert len(split["train"]) + len(split["validation"]) == len(examples)
        old = _default(split_method=method)  # a config saved before test_fraction existed
        del old.data.test_fraction
        assert split_examples(old, examples) == split
    blocked = split_examples(_default(test_fraction=0.0), examples)
    assert [sum(e.label == t for e in blocked["validation"]) for t in (1, 2, 3)] == [12, 16, 8]


def test_subset_test_block_is_taken_from_within_the_subset():
    examples = _synthetic((200, 400, 100))
    split = split_examples(_default(subset_size=100), examples)
    chosen = split["train"] + split["validation"] + split["test"]
    assert len(chosen) == 100
    counts = [sum(e.label == t for e in split["test"]) for t in (1, 2, 3)]
    assert counts == [round(0.15 * n) for n in (29, 57, 14)] == [4, 9, 2]
    # Test = the subset's last ids of each type.
    for label in (1, 2, 3):
        mine = sorted(int(e.id) for e in chosen if e.label == label)
        test = sorted(int(e.id) for e in split["test"] if e.label == label)
        assert test == mine[len(mine) - len(test) :]


def test_bad_three_way_settings_name_the_field():
    with pytest.raises(ValueError, match=r"config\.data\.test_fraction must be in \[0, 1\)"):
        get_split_ids(_default(test_fraction=1.0))
    with pytest.raises(ValueError, match=r"config\.data\.test_fraction"):
        get_split_ids(_default(test_fraction=-0.1))
    with pytest.raises(
        ValueError, match=r"val_fraction \+ config\.data\.test_fraction must be < 1"
    ):
        get_split_ids(_default(val_fraction=0.5, test_fraction=0.5))
    examples = _synthetic((20, 3, 20))  # type 2: test 1, validation 1, a gap of 1 eats the rest
    with pytest.raises(ValueError, match=r"Tumour type 2 \(3 ids\) has no training id.*split_gap"):
        split_examples(_default(split_gap=1), examples)
    with pytest.raises(ValueError, match=r"Tumour type 2 .*no training id"):
        split_examples(_default(split_method="kfold", num_folds=2, split_gap=1), examples)


def test_write_split_file_lists_all_three_splits(tmp_path):
    config = _config(test_fraction=0.15)
    with open(write_split_file(config, tmp_path)) as f:
        content = json.load(f)
    split = get_split_ids(config)
    assert [content[name] for name in SPLITS] == [split[name] for name in SPLITS]
    assert [len(split[name]) for name in SPLITS] == [39, 12, 9]  # the sample: 20 ids per type
    assert set(content["settings"]) == {"seed", *SPLIT_SETTINGS}
    assert content["settings"]["test_fraction"] == 0.15
