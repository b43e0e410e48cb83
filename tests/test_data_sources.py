"""Folder source validation, the bundled sample, and the TFDS builder."""

import csv
import hashlib
import os
import warnings

import numpy as np
import pytest
from PIL import Image

from bts_jax.configs import test as test_config
from bts_jax.data import SAMPLE_DIR, get_examples, load_grayscale, sources
from bts_jax.data.sources import list_folder, validate_examples

SHARED = os.path.join(
    os.path.dirname(__file__), "..", "..", "shared", "data", "figshare_brain_tumor"
)


def make_folder(root, ids=("1", "2", "10"), size=(24, 20), labels=None, mask_values=(0, 255)):
    """A tiny Kaggle-layout folder with random images and rectangle masks."""
    rng = np.random.default_rng(0)
    os.makedirs(root / "images", exist_ok=True)
    os.makedirs(root / "masks", exist_ok=True)
    for i in ids:
        image = rng.integers(0, 256, (size[1], size[0]), dtype=np.uint8)
        mask = np.full((size[1], size[0]), mask_values[0], np.uint8)
        mask[2:8, 3:9] = mask_values[1]
        Image.fromarray(image).save(root / "images" / f"{i}.png")
        Image.fromarray(mask).save(root / "masks" / f"{i}.png")
    if labels is not None:
        with open(root / "metadata.csv", "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["id", "patient_id", "label"])
            for i, label in zip(ids, labels, strict=True):
                w.writerow([i, "", label])
    return root


def test_bundled_sample_contents():
    examples = get_examples(test_config.get_config().data)
    assert len(examples) == 60
    labels = [e.label for e in examples]
    assert [labels.count(t) for t in (1, 2, 3)] == [20, 20, 20]
    ids = [e.id for e in examples]
    assert ids == sorted(ids, key=int)  # numeric ids sort numerically
    assert {"1203", "1204", "1205", "1206", "1207"} <= set(ids)
    total = sum(os.path.getsize(p) for e in examples for p in (e.image, e.mask))
    assert total < 8e6
    with open(os.path.join(SAMPLE_DIR, "README.md")) as f:
        readme = f.read()
    for needle in ("CC BY 4.0", "10.6084/m9.figshare.1512427", "e0140381", "e0157112"):
        assert needle in readme
    for e in examples[:5]:
        assert set(np.unique(load_grayscale(e.mask))) == {0, 255}


@pytest.mark.skipif(not os.path.isdir(SHARED), reason="shared figshare folder not present")
def test_bundled_sample_is_byte_identical_to_shared_copy():
    for e in get_examples(test_config.get_config().data)[::7]:
        for kind, path in (("images", e.image), ("masks", e.mask)):
            with open(path, "rb") as a, open(os.path.join(SHARED, kind, f"{e.id}.png"), "rb") as b:
                assert hashlib.sha256(a.read()).digest() == hashlib.sha256(b.read()).digest()


def test_folder_lists_ids_and_labels(tmp_path):
    make_folder(tmp_path, ids=("10", "2", "1", "b", "a"), labels=[1, 2, 3, "", 2])
    examples = list_folder(str(tmp_path))
    assert [e.id for e in examples] == ["1", "2", "10", "a", "b"]
    assert [e.label for e in examples] == [3, 2, 1, 2, 0]
    validate_examples(examples, strict_masks=True)


def test_folder_without_metadata_is_one_unknown_group(tmp_path):
    make_folder(tmp_path)
    assert {e.label for e in list_folder(str(tmp_path))} == {0}


def test_missing_and_empty_folders(tmp_path):
    with pytest.raises(FileNotFoundError, match="nowhere"):
        list_folder(str(tmp_path / "nowhere"))
    (tmp_path / "images").mkdir()
    with pytest.raises(FileNotFoundError, match="masks"):
        os.makedirs(tmp_path / "x" / "images")
        Image.fromarray(np.zeros((4, 4), np.uint8)).save(tmp_path / "x" / "images" / "1.png")
        list_folder(str(tmp_path / "x"))
    (tmp_path / "masks").mkdir()
    with pytest.raises(ValueError, match="No image files"):
        list_folder(str(tmp_path))
    with pytest.raises(ValueError, match="config.data.data_dir is empty"):
        list_folder("")


def test_unpaired_files_are_named(tmp_path):
    make_folder(tmp_path)
    os.remove(tmp_path / "masks" / "2.png")
    with pytest.raises(ValueError, match=r"without a mask.*images/2\.png"):
        list_folder(str(tmp_path))
    make_folder(tmp_path)
    os.remove(tmp_path / "images" / "10.png")
    with pytest.raises(ValueError, match=r"without an image.*masks/10\.png"):
        list_folder(str(tmp_path))


def test_corrupt_and_truncated_files_are_named(tmp_path):
    make_folder(tmp_path)
    (tmp_path / "images" / "2.png").write_bytes(b"garbage")
    with pytest.raises(ValueError, match=r"Cannot read .*images/2\.png"):
        validate_examples(list_folder(str(tmp_path)), strict_masks=False)
    make_folder(tmp_path)
    data = (tmp_path / "masks" / "10.png").read_bytes()
    (tmp_path / "masks" / "10.png").write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match=r"masks/10\.png"):
        validate_examples(list_folder(str(tmp_path)), strict_masks=False)


def test_size_mismatch_is_named(tmp_path):
    make_folder(tmp_path)
    Image.fromarray(np.zeros((5, 5), np.uint8)).save(tmp_path / "masks" / "1.png")
    with pytest.raises(ValueError, match=r"masks/1\.png is 5x5.*24x20"):
        validate_examples(list_folder(str(tmp_path)), strict_masks=False)


def test_non_binary_masks_warn_or_fail_when_strict(tmp_path):
    make_folder(tmp_path, mask_values=(0, 200))
    examples = list_folder(str(tmp_path))
    with pytest.warns(UserWarning, match=r"not binary.*values \[0, 200\]"):
        validate_examples(examples, strict_masks=False)
    with pytest.raises(ValueError, match="strict_masks"):
        validate_examples(examples, strict_masks=True)
    make_folder(tmp_path)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        validate_examples(list_folder(str(tmp_path)), strict_masks=True)


def test_masks_that_binarise_to_empty_are_errors_even_when_not_strict(tmp_path):
    make_folder(tmp_path, mask_values=(0, 1))
    with pytest.raises(ValueError, match=r"masks/.*values \[0, 1\], all <= 127.*0/255"):
        validate_examples(list_folder(str(tmp_path)), strict_masks=False)


def test_sixteen_bit_files_are_named(tmp_path):
    make_folder(tmp_path)
    Image.fromarray(np.zeros((20, 24), np.uint16)).save(tmp_path / "masks" / "2.png")
    with pytest.raises(ValueError, match=r"masks/2\.png is a 'I;16' image; only 8-bit"):
        validate_examples(list_folder(str(tmp_path)), strict_masks=False)


def test_get_examples_validates_folder_source(tmp_path):
    make_folder(tmp_path)
    Image.fromarray(np.zeros((5, 5), np.uint8)).save(tmp_path / "masks" / "2.png")
    config = test_config.get_config()
    config.data.source = "folder"
    config.data.data_dir = str(tmp_path)
    with pytest.raises(ValueError, match=r"masks/2\.png"):
        get_examples(config.data)
    config.data.source = "nope"
    with pytest.raises(ValueError, match="config.data.source"):
        get_examples(config.data)


@pytest.mark.slow
def test_tfds_builder_round_trip(tmp_path):
    from bts_jax.data import make_dataset, tfds_builder

    manual = make_folder(
        tmp_path / "download" / "brain-tumor", ids=("3", "1", "2", "7"), size=(32, 48)
    )
    (tmp_path / "download" / "brain-tumor" / "metadata.csv").write_text("id,label\n1,1\n2,3\n")
    builder = tfds_builder.prepare(str(tmp_path / "tfds"), manual_dir=str(tmp_path / "download"))
    assert builder.name == "brain_tumor_segmentation"
    assert builder.info.splits["train"].num_examples == 4
    examples = tfds_builder.read_examples(str(tmp_path / "tfds"))
    assert [e.id for e in examples] == ["1", "2", "3", "7"]
    assert [e.label for e in examples] == [1, 3, 0, 0]
    from bts_jax.data.preprocessing import decode_grayscale

    for e in examples:
        for kind, data in (("images", e.image), ("masks", e.mask)):
            np.testing.assert_array_equal(
                decode_grayscale(data).numpy(), load_grayscale(manual / kind / f"{e.id}.png")
            )
    # Read through config.data.source="tfds": the same batches as from the folder.
    config = test_config.get_config()
    config.data.update(source="tfds", data_dir=str(tmp_path / "tfds"), image_size=16, cache=False)
    config.eval_batch_size = 2
    from_tfds = list(make_dataset(config, "validation", process_index=0, process_count=1))
    config.data.update(source="folder", data_dir=str(manual))
    from_folder = list(make_dataset(config, "validation", process_index=0, process_count=1))
    assert len(from_tfds) == len(from_folder) >= 1
    for a, b in zip(from_tfds, from_folder, strict=True):
        for key in ("image", "mask", "valid", "id"):
            np.testing.assert_array_equal(a[key], b[key])
    with pytest.raises(FileNotFoundError, match="Prepare it first"):
        tfds_builder.read_examples(str(tmp_path / "empty"))


def test_ids_missing_from_metadata_are_warned_with_count_and_first_ids(tmp_path):
    make_folder(tmp_path, ids=("1", "2", "10", "11"), labels=[1, 2, 3, 1])
    with open(tmp_path / "metadata.csv") as f:
        rows = f.read().splitlines()
    (tmp_path / "metadata.csv").write_text("\n".join(rows[:3]) + "\n")  # rows of ids 1 and 2
    with pytest.warns(UserWarning) as record:
        examples = list_folder(str(tmp_path))
    message = str(record[0].message)
    assert "has no row for 2 of 4 image(s) (first ids: ['10', '11'])" in message
    assert "treat 'unknown' as a type of its own" in message
    assert [e.label for e in examples] == [1, 2, 0, 0]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        make_folder(tmp_path / "complete", labels=[1, 2, 3])
        list_folder(str(tmp_path / "complete"))  # Every id listed: no warning.


def test_all_zero_masks_are_counted_in_the_folder_summary(tmp_path):
    make_folder(tmp_path, ids=("1", "2", "3"))
    Image.fromarray(np.zeros((20, 24), np.uint8)).save(tmp_path / "masks" / "2.png")
    with pytest.warns(UserWarning, match=r"Checked 3 pairs: 1 all-zero \(tumour-free\) mask"):
        summary = validate_examples(list_folder(str(tmp_path)), strict_masks=True)
    assert summary == sources.FolderSummary(3, empty_masks=("2",), non_binary_masks=())
    assert "(ids ['2'])" in summary.describe()
