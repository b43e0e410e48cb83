"""Id splits: disjoint, contiguous per tumour type, deterministic, gaps, k-fold, subsets."""

import json

import pytest

from bts_jax.data import get_examples, get_split_ids, split_examples, write_split_file
from bts_jax.data.sources import Example
from configs import test as test_config


def _config(**data):
    config = test_config.get_config()
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
