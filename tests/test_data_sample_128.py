"""The bundled 128x128 sample (source "sample_128") and the tool that writes it."""

import csv
import hashlib
import os

import numpy as np
import pytest
from PIL import Image

from bts_jax.configs import test as test_config
from bts_jax.data import get_examples, sources, splits
from tools import make_sample_128

SAMPLE_128 = sources.SAMPLE_DIRS["sample_128"]
SHARED = os.path.join(
    os.path.dirname(__file__), "..", "..", "shared", "data", "figshare_brain_tumor"
)
needs_shared = pytest.mark.skipif(
    not os.path.isdir(SHARED), reason="shared figshare folder not present"
)


def _config():
    config = test_config.get_config()
    config.data.source = "sample_128"
    return config


def test_source_lists_every_pair_with_its_tumour_type():
    examples = get_examples(_config().data)
    assert len(examples) == 906
    labels = [e.label for e in examples]
    assert [labels.count(t) for t in (1, 2, 3)] == [209, 422, 275]
    ids = [e.id for e in examples]
    assert ids == sorted(ids, key=int) and len(set(ids)) == len(ids)
    assert all(os.path.dirname(e.image) == os.path.join(SAMPLE_128, "images") for e in examples)


def test_pairs_are_128_pixels_and_masks_binary_and_non_empty():
    for example in get_examples(_config().data, validate=False):
        with Image.open(example.image) as image, Image.open(example.mask) as mask:
            assert (image.mode, image.size, mask.mode, mask.size) == (
                "L",
                (128, 128),
                "L",
                (128, 128),
            )
            values = np.unique(np.asarray(mask))
        assert values.tolist() == [0, 255], example.id


def test_metadata_types_readme_checksums_and_size():
    with open(os.path.join(SAMPLE_128, "metadata.csv"), newline="") as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0]) == ["id", "patient_id", "label"]
    assert all(r["id"].isdigit() and r["patient_id"] == "" and r["label"] in "123" for r in rows)
    with open(os.path.join(SAMPLE_128, "README.md")) as f:
        readme = f.read()
    for needle in ("CC BY 4.0", "10.6084/m9.figshare.1512427", "e0140381", "e0157112"):
        assert needle in readme
    with open(os.path.join(SAMPLE_128, "sha256sums.txt")) as f:
        listed = dict(reversed(line.split("  ", 1)) for line in f.read().splitlines())
    assert len(listed) == 1 + 2 * len(rows)
    for path, digest in listed.items():
        with open(os.path.join(SAMPLE_128, path), "rb") as f:
            assert hashlib.sha256(f.read()).hexdigest() == digest, path
    # The package's data budget: both bundled samples together under 15 MB.
    total = sum(
        os.path.getsize(os.path.join(root, name))
        for folder in sources.SAMPLE_DIRS.values()
        for root, _, names in os.walk(folder)
        for name in names
    )
    assert total < 15e6


def test_blocked_split_of_the_sample_validates_on_the_last_ids_of_each_type():
    config = _config()
    config.data.val_fraction = 0.15
    split = splits.split_examples(config)
    by_label = {}
    for name, examples in split.items():
        for e in examples:
            by_label.setdefault(e.label, {}).setdefault(name, []).append(int(e.id))
    for parts in by_label.values():
        assert max(parts["train"]) < min(parts["validation"])


def _folder(root, labels):
    os.makedirs(root / "images")
    os.makedirs(root / "masks")
    rng = np.random.default_rng(0)
    with open(root / "metadata.csv", "w") as f:
        f.write("id,patient_id,label\n")
        for i, label in enumerate(labels, start=1):
            image = rng.integers(0, 256, (64, 48), np.uint8)
            mask = np.zeros((64, 48), np.uint8)
            mask[10 + i % 5 : 30, 8:20] = 255
            Image.fromarray(image).save(root / "images" / f"{i}.png")
            Image.fromarray(mask).save(root / "masks" / f"{i}.png")
            f.write(f"{i},,{label}\n")
    return root


def test_select_ids_holds_out_the_last_blocks_drops_a_gap_and_strides(tmp_path):
    # Ids 1-20 are type 1, 21-30 type 2.
    examples = sources.list_folder(str(_folder(tmp_path, [1] * 20 + [2] * 10)))
    bundle, heldout = make_sample_128.select_ids(examples, 0.2, gap=2, stride=3)
    assert [e.id for e in heldout] == ["17", "18", "19", "20", "29", "30"]
    # Type 1: ids 1-14 remain (15, 16 are the gap), every third; type 2: ids 21-26.
    assert [e.id for e in bundle] == ["1", "4", "7", "10", "13", "21", "24"]


@pytest.mark.slow
def test_tool_writes_a_loadable_deterministic_folder(tmp_path):
    source = _folder(tmp_path / "src", [1] * 10 + [3] * 10)
    out = tmp_path / "out"
    args = ["--data_dir", str(source), "--out_dir", str(out), "--size", "32", "--gap", "1"]
    assert make_sample_128.main(args) == 0
    first = (out / "sha256sums.txt").read_text()
    assert make_sample_128.main(args) == 0
    assert (out / "sha256sums.txt").read_text() == first
    examples = sources.list_folder(str(out))
    sources.validate_examples(examples, strict_masks=True)
    # 10 per type: 2 held out, 1 gap, 7 left, every second of them -> 4 per type.
    assert [e.label for e in examples] == [1] * 4 + [3] * 4
    with Image.open(examples[0].image) as image:
        assert image.size == (32, 32)
    assert "CC BY 4.0" in (out / "README.md").read_text()


@pytest.mark.slow
@needs_shared
def test_bundle_is_what_the_tool_selects_from_the_shared_folder_and_misses_the_heldout(tmp_path):
    examples = sources.list_folder(SHARED)
    bundle, heldout = make_sample_128.select_ids(examples, 0.15, gap=4, stride=2)
    bundled = [e.id for e in get_examples(_config().data, validate=False)]
    assert [e.id for e in bundle] == bundled
    assert not {e.id for e in heldout} & set(bundled)
    # Byte-identical regeneration of a few pairs (955 is one of the 256x256 slices).
    by_id = {e.id: e for e in examples}
    out = str(tmp_path)
    for sub in ("images", "masks"):
        os.makedirs(os.path.join(out, sub))
    for example_id in ("1", "955", bundled[-1]):
        make_sample_128._write_pair(by_id[example_id], out, 128)
        for sub in ("images", "masks"):
            name = os.path.join(sub, f"{example_id}.png")
            with (
                open(os.path.join(out, name), "rb") as a,
                open(os.path.join(SAMPLE_128, name), "rb") as b,
            ):
                assert a.read() == b.read(), name
