"""Dataset sources: a folder in the Kaggle layout and the bundled samples, listed and checked.

A source is listed as `Example` records (id, tumour type, where the image and mask bytes come from).
Folders are validated before training, so a broken dataset fails with a message naming the file
instead of crashing an epoch later inside tf.data.
"""

from __future__ import annotations

import csv
import dataclasses
import logging
import os
import warnings
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
from PIL import Image, UnidentifiedImageError

from bts_jax.data.formats import (
    EIGHT_BIT_MODES,
    MASK_THRESHOLD,
    TRAINING_EXTENSIONS,
    has_extension,
)

SAMPLE_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "sample")
# The bundled samples by source name: "sample" = 60 full-size pairs (the tests' data),
# "sample_128" = 906 pairs at 128x128 (the quickstart's training data; see its README).
SAMPLE_DIRS = {
    "sample": SAMPLE_DIR,
    "sample_128": os.path.join(os.path.dirname(os.path.abspath(__file__)), "sample_128"),
}
# figshare labels (metadata.csv `label`); 0 = unknown.
TUMOUR_TYPES = ("unknown", "meningioma", "glioma", "pituitary")
UNKNOWN_LABEL = 0


@dataclasses.dataclass(frozen=True)
class Example:
    """One image/mask pair of a source.

    Attributes:
      id: the file stem (folder sources) or the stored id (TFDS), a string.
      label: tumour type, an index into `TUMOUR_TYPES` (0 = unknown).
      image: path of the image file, or its encoded bytes (TFDS source).
      mask: path of the mask file, or its encoded bytes.
    """

    id: str
    label: int
    image: str | bytes
    mask: str | bytes


def id_sort_key(example_id: str) -> tuple:
    """Sort key for ids: numeric stems numerically (2 < 10), then the others as strings.

    Args:
      example_id: an id string.

    Returns:
      A tuple usable as a sort key.
    """
    return (0, int(example_id), "") if example_id.isdigit() else (1, 0, example_id)


def _list_images(folder: str, setting: str) -> dict[str, str]:
    if not os.path.isdir(folder):
        raise FileNotFoundError(f"Folder not found: {folder} (from {setting}).")
    files = {}
    for name in sorted(os.listdir(folder)):
        if not has_extension(name, TRAINING_EXTENSIONS):
            continue
        stem = os.path.splitext(name)[0]
        if stem in files:
            raise ValueError(f"Two files with id {stem!r} in {folder}: {files[stem]} and {name}.")
        files[stem] = os.path.join(folder, name)
    if not files:
        raise ValueError(
            f"No image files ({', '.join(TRAINING_EXTENSIONS)}) in {folder} (from {setting})."
        )
    return files


def read_metadata(path: str) -> dict[str, int]:
    """Reads ``metadata.csv`` (columns ``id`` and ``label``; ``patient_id`` is optional and unused).

    Args:
      path: the CSV file.

    Returns:
      Mapping id -> tumour type label (1-3; empty or unknown values -> 0).

    Raises:
      ValueError: the file has no ``id`` column, or a label is not an integer in 0-3.
    """
    labels = {}
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        if reader.fieldnames is None or "id" not in reader.fieldnames:
            raise ValueError(
                f"{path} must have a header with an 'id' column, got {reader.fieldnames}."
            )
        for line, row in enumerate(reader, start=2):
            value = (row.get("label") or "").strip()
            try:
                label = int(value) if value else UNKNOWN_LABEL
            except ValueError:
                label = -1
            if not 0 <= label < len(TUMOUR_TYPES):
                raise ValueError(
                    f"{path}, line {line}: label {value!r} is not one of 1, 2, 3 "
                    "(or empty = unknown)."
                )
            labels[row["id"].strip()] = label
    return labels


def list_folder(data_dir: str, setting: str = "config.data.data_dir") -> list[Example]:
    """Lists the pairs of a folder in the Kaggle layout (no pixel checks; see `validate_folder`).

    Layout: ``images/<id>.<ext>``, ``masks/<id>.<ext>``, optional ``metadata.csv`` with
      ``id,label``.
    Without ``metadata.csv`` (or for ids it does not list) the tumour type is unknown (0); ids
    missing from an existing ``metadata.csv`` are warned about (count and first ids).

    Args:
      data_dir: the folder.
      setting: the config field the folder came from, for error messages.

    Returns:
      Examples sorted by `id_sort_key`.

    Raises:
      FileNotFoundError: a folder is missing.
      ValueError: a folder is empty, or an image has no mask or a mask no image (the message names
        them).
    """
    if not data_dir:
        raise ValueError(f"{setting} is empty: set it to a folder with images/ and masks/.")
    if not os.path.isdir(data_dir):
        raise FileNotFoundError(f"Data folder not found: {data_dir} (from {setting}).")
    images = _list_images(os.path.join(data_dir, "images"), setting)
    masks = _list_images(os.path.join(data_dir, "masks"), setting)
    no_mask = sorted(set(images) - set(masks), key=id_sort_key)
    no_image = sorted(set(masks) - set(images), key=id_sort_key)
    if no_mask:
        raise ValueError(
            f"{len(no_mask)} image(s) without a mask in {data_dir}/masks, "
            f"e.g. {images[no_mask[0]]} "
            f"(ids {no_mask[:10]})."
        )
    if no_image:
        raise ValueError(
            f"{len(no_image)} mask(s) without an image in {data_dir}/images, "
            f"e.g. {masks[no_image[0]]} "
            f"(ids {no_image[:10]})."
        )
    metadata_path = os.path.join(data_dir, "metadata.csv")
    labels = {}
    if os.path.isfile(metadata_path):
        labels = read_metadata(metadata_path)
        unlisted = [i for i in sorted(images, key=id_sort_key) if i not in labels]
        if unlisted:
            _warn(
                f"{metadata_path} has no row for {len(unlisted)} of {len(images)} image(s) "
                f"(first ids: {unlisted[:10]}): they train as tumour type 'unknown'. The blocked "
                "and k-fold splits treat 'unknown' as a type of its own: its ids are cut into "
                "their own train/validation/test blocks. Add their rows (label 1-3) to keep "
                "them with their type."
            )
    return [
        Example(id=i, label=labels.get(i, UNKNOWN_LABEL), image=images[i], mask=masks[i])
        for i in sorted(images, key=id_sort_key)
    ]


def _warn(message: str) -> None:
    # One channel (a Python warning, not also a log record), issued from this line: Python shows
    # a warning once per text and location, so a folder listed several times warns once.
    warnings.warn(message, stacklevel=1)


@dataclasses.dataclass(frozen=True)
class FolderSummary:
    """What `validate_examples` found in a folder whose every pair is usable.

    Attributes:
      num_pairs: the pairs checked.
      empty_masks: ids whose mask is all zero (no tumour pixel), sorted.
      non_binary_masks: ids whose mask holds values other than {0, 255}, sorted.
    """

    num_pairs: int
    empty_masks: tuple[str, ...]
    non_binary_masks: tuple[str, ...]

    def describe(self) -> str:
        """One line for the log, e.g. ``"Checked 60 pairs: 2 all-zero masks (ids [...])..."``."""

        def count(ids: tuple[str, ...], what: str) -> str:
            return f"{len(ids)} {what}" + (f" (ids {list(ids[:10])})" if ids else "")

        return (
            f"Checked {self.num_pairs} pairs: "
            f"{count(self.empty_masks, 'all-zero (tumour-free) mask(s)')}, "
            f"{count(self.non_binary_masks, 'non-binary mask(s)')}."
        )


def _check_pair(example: Example) -> tuple[str | None, str | None, bool]:
    """Returns (error, warning, mask is all zero) for one pair: decoding, sizes, mask values."""
    sizes = []
    for path in (example.image, example.mask):
        try:
            with Image.open(path) as im:
                im.load()  # full decode: catches truncated and corrupt files, not only bad headers
                if im.mode not in EIGHT_BIT_MODES:
                    return (
                        f"{path} is a {im.mode!r} image; only 8-bit images are supported "
                        "(convert it to 8-bit grayscale).",
                        None,
                        False,
                    )
                sizes.append(im.size)
                if path is example.mask:
                    mask = np.asarray(im if im.mode == "L" else im.convert("L"))
        except (OSError, UnidentifiedImageError, SyntaxError, ValueError) as e:
            return f"Cannot read {path}: {e}", None, False
    if sizes[0] != sizes[1]:
        return (
            f"Mask {example.mask} is {sizes[1][0]}x{sizes[1][1]} (WxH) but its image "
            f"{example.image} is "
            f"{sizes[0][0]}x{sizes[0][1]}.",
            None,
            False,
        )
    values = np.unique(mask)
    if 0 < values.max() <= MASK_THRESHOLD:
        # Binarised at the threshold, such a mask (e.g. saved as 0/1) would train as background.
        return (
            f"Mask {example.mask} has values {values[:8].tolist()}, all <= {MASK_THRESHOLD}: "
            f"binarised with > {MASK_THRESHOLD} -> tumour it would be empty. Save masks as 0/255.",
            None,
            False,
        )
    empty = bool(values.max() == 0)
    if not np.isin(values, (0, 255)).all():
        shown = values[:8].tolist()
        return (
            None,
            (
                f"Mask {example.mask} is not binary {{0, 255}}: values {shown}"
                f"{'...' if len(values) > 8 else ''}. "
                f"It is binarised with > {MASK_THRESHOLD} -> tumour."
            ),
            empty,
        )
    return None, None, empty


def validate_examples(examples: Sequence[Example], strict_masks: bool) -> FolderSummary:
    """Checks every pair of a folder source before training, and logs a summary.

    Every file must decode (fully: truncated files are caught), each mask must have its image's
    size, and masks should hold only {0, 255}; otherwise a warning (``logging`` and ``warnings``),
    or an error when ``strict_masks`` (``config.data.strict_masks``). All-zero masks are valid
    (tumour-free slices) but counted in the summary, a warning when there are any.

    Args:
      examples: pairs from `list_folder` (paths, not bytes).
      strict_masks: fail on non-binary masks instead of warning.

    Returns:
      The `FolderSummary`.

    Raises:
      ValueError: the first failing file, by name.
    """
    # PIL releases the GIL while decoding, so threads give a real speed-up on the 2145 pairs.
    with ThreadPoolExecutor(max_workers=min(16, (os.cpu_count() or 1) * 2)) as pool:
        results = list(pool.map(_check_pair, examples))
    errors = [e for e, _, _ in results if e]
    if errors:
        more = f" ({len(errors) - 1} more file(s) fail too)" if len(errors) > 1 else ""
        raise ValueError(errors[0] + more)
    non_binary = [w for _, w, _ in results if w]
    if non_binary:
        more = f" ({len(non_binary) - 1} more non-binary mask(s))" if len(non_binary) > 1 else ""
        message = non_binary[0] + more
        if strict_masks:
            raise ValueError(message + " Set config.data.strict_masks=False to accept them.")
        _warn(message)
    checked = list(zip(examples, results, strict=True))
    summary = FolderSummary(
        num_pairs=len(examples),
        empty_masks=tuple(e.id for e, (_, _, empty) in checked if empty),
        non_binary_masks=tuple(e.id for e, (_, warning, _) in checked if warning),
    )
    if summary.empty_masks:
        _warn(summary.describe() + " All-zero masks train as slices without tumour.")
    else:
        logging.info(summary.describe())
    return summary


def source_dir(data_config: Mapping[str, Any]) -> str:
    """The folder a source reads: a bundled sample (`SAMPLE_DIRS`), or ``config.data.data_dir``.

    Args:
      data_config: ``config.data``.

    Returns:
      An absolute path.
    """
    if data_config["source"] in SAMPLE_DIRS:
        return SAMPLE_DIRS[data_config["source"]]
    return os.path.abspath(os.path.expanduser(data_config["data_dir"]))
