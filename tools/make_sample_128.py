"""Writes the bundled 128x128 sample (``bts_jax/data/sample_128``) from the shared figshare folder.

    python tools/make_sample_128.py --data_dir ../shared/data/figshare_brain_tumor

Which pairs (per tumour type, the folder's ids in ascending order):

1. The last ``--heldout_fraction`` of the type's ids are held out: they are the patients that
   ``benchmarks/heldout_quickstart.py`` scores a trained quickstart on, so none of them is bundled.
2. ``--gap`` ids just before that block are dropped too, so a patient whose slices straddle the
   boundary does not end up on both sides.
3. Of the ids before the gap, every ``--stride``-th is kept. Neighbouring ids are mostly
   neighbouring slices of one patient and nearly identical, so a stride keeps every patient at a
   fraction of the bytes.

Each image is resized to ``--size`` with Pillow's bilinear filter (which widens its support when
it shrinks, like ``tf.image.resize(..., antialias=True)`` in the training pipeline) and each mask
with nearest neighbour (so it stays exactly {0, 255}); both are written as maximally compressed
8-bit PNG.
The output is deterministic: running the script again gives byte-identical files.
"""

import argparse
import csv
import hashlib
import os
import shutil
import sys

import ml_collections
import numpy as np
from PIL import Image

from bts_jax.data import sources, splits

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT_DATA_DIR = os.path.join(REPO, "..", "shared", "data", "figshare_brain_tumor")
DEFAULT_OUT_DIR = os.path.join(REPO, "bts_jax", "data", "sample_128")
# The README of the bundle is written from this template; {placeholders} are filled in.
README_TEMPLATE = """\
# Bundled sample at {size}x{size}: {count} real image/mask pairs of the figshare brain tumor set

The training data of the quickstart (`configs/quickstart.py`,
`config.data.source = "sample_{size}"`), shipped inside the package so that `./run.sh train`
learns from many patients without any download. Same layout as the Kaggle set
`nikhilroxtomar/brain-tumor-segmentation`, at the resolution the quickstart trains at:

| path | what |
|---|---|
| `images/<id>.png` | 8-bit grayscale PNG, {size}x{size}, a T1-weighted contrast-enhanced MRI |
| `masks/<id>.png` | 8-bit grayscale PNG, {size}x{size}, binary tumour mask, values {{0, 255}} |
| `metadata.csv` | `id,patient_id,label`; `label`: 1 meningioma, 2 glioma, 3 pituitary |
| `sha256sums.txt` | SHA-256 of every file (`sha256sum -c sha256sums.txt`) |

`patient_id` is empty (not published). Made by `tools/make_sample_128.py` from the project's
copy of the figshare PNGs (the folder `shared/data/figshare_brain_tumor`, a lossless PNG
re-encoding of the Kaggle/figshare images; see its README for provenance). Images: Pillow
bilinear resize (antialiased when shrinking) of the original 512x512 or 256x256 slice; masks:
nearest-neighbour resize. Size: about {megabytes:.1f} MB. The full-size pairs of
`bts_jax/data/sample` stay for the tests of equalisation and resizing.

## Which ids, and why

Per tumour type, the source folder's ids in ascending order:

- the last {heldout_percent:g}% are **held out** (not bundled):
  `benchmarks/heldout_quickstart.py` scores a trained quickstart on them (minus the few ids of
  `bts_jax/data/sample`), so they are patients the model never saw;
- the {gap} ids just before them are dropped, so a patient whose slices straddle the boundary is
  not on both sides;
- of the ids before that, every {stride_word} id is bundled (neighbouring ids are mostly
  neighbouring slices of one patient, so this keeps every patient at a fraction of the bytes).

Consecutive figshare ids are mostly consecutive slices of one patient; patient ids are not
published. The quickstart's blocked split validates on the last ids of each type here, next to
the held-out blocks.

| type | pairs | bundled ids (from, to) | held-out ids (from, to) |
|---|---|---|---|
{rows}

## License and citation

- Original dataset: Jun Cheng, "brain tumor dataset", figshare, 2017.
  https://doi.org/10.6084/m9.figshare.1512427 (3064 slices from 233 patients).
- License: **CC BY 4.0** (https://creativecommons.org/licenses/by/4.0/). These PNGs are a
  format conversion (intensity-scaled to 8 bits) of that dataset, downscaled to {size}x{size};
  nothing else was changed.
- If you use these data, cite:
  - Cheng, Jun, et al. "Enhanced performance of brain tumor classification via tumor region
    augmentation and partition." PLoS One 10.10 (2015): e0140381.
  - Cheng, Jun, et al. "Retrieval of brain tumors by adaptive spatial pooling and Fisher
    vector representation." PLoS One 11.6 (2016): e0157112.
"""


def select_ids(
    examples: list[sources.Example], heldout_fraction: float, gap: int, stride: int
) -> tuple[list[sources.Example], list[sources.Example]]:
    """Splits a folder's pairs into the bundle and the held-out blocks (see the module docstring).

    Args:
      examples: every pair of the source folder, with tumour-type labels.
      heldout_fraction: share of each type's last ids held out.
      gap: ids dropped just before each held-out block.
      stride: keep every ``stride``-th of the remaining ids.

    Returns:
      ``(bundle, heldout)``, each sorted by id.
    """
    config = ml_collections.ConfigDict(
        {
            "seed": 0,
            "data": {
                "split_method": "blocked",
                "val_fraction": heldout_fraction,
                "split_gap": gap,
                "num_folds": 5,
                "fold": 0,
                "subset_size": 0,
            },
        }
    )
    split = splits.split_examples(config, examples)
    bundle = []
    for group in _by_type(split["train"]).values():
        bundle.extend(group[::stride])
    return sorted(bundle, key=lambda e: sources.id_sort_key(e.id)), split["validation"]


def _by_type(examples: list[sources.Example]) -> dict[int, list[sources.Example]]:
    groups: dict[int, list[sources.Example]] = {}
    for example in sorted(examples, key=lambda e: sources.id_sort_key(e.id)):
        groups.setdefault(example.label, []).append(example)
    return dict(sorted(groups.items()))


def _write_pair(example: sources.Example, out_dir: str, size: int) -> None:
    with Image.open(example.image) as image:
        small = image.convert("L").resize((size, size), Image.Resampling.BILINEAR)
    with Image.open(example.mask) as mask:
        binary = mask.convert("L").point(lambda v: 255 if v > 127 else 0)
        small_mask = binary.resize((size, size), Image.Resampling.NEAREST)
    if not np.asarray(small_mask).any():
        raise ValueError(f"The mask {example.mask} is empty at {size}x{size}.")
    small.save(os.path.join(out_dir, "images", f"{example.id}.png"), optimize=True)
    small_mask.save(os.path.join(out_dir, "masks", f"{example.id}.png"), optimize=True)


def _sha256(path: str) -> str:
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def main(argv: list[str] | None = None) -> int:
    """Writes the folder; ``argv`` are the command-line arguments (default ``sys.argv[1:]``).

    Args:
      argv: arguments, e.g. ``["--size", "128"]``.

    Returns:
      The exit status, 0.
    """
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data_dir", default=DEFAULT_DATA_DIR, help="The shared figshare folder.")
    parser.add_argument("--out_dir", default=DEFAULT_OUT_DIR, help="Written afresh.")
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--heldout_fraction", type=float, default=0.15)
    parser.add_argument("--gap", type=int, default=4)
    parser.add_argument("--stride", type=int, default=2)
    args = parser.parse_args(argv)

    examples = sources.list_folder(args.data_dir, "--data_dir")
    bundle, heldout = select_ids(examples, args.heldout_fraction, args.gap, args.stride)
    if os.path.isdir(args.out_dir):
        shutil.rmtree(args.out_dir)
    for sub in ("images", "masks"):
        os.makedirs(os.path.join(args.out_dir, sub))
    for example in bundle:
        _write_pair(example, args.out_dir, args.size)
    with open(os.path.join(args.out_dir, "metadata.csv"), "w", newline="") as f:
        writer = csv.writer(f, lineterminator="\n")
        writer.writerow(["id", "patient_id", "label"])
        writer.writerows([e.id, "", e.label] for e in bundle)

    rows = []
    held_by_type = _by_type(heldout)
    for label, group in _by_type(bundle).items():
        held = held_by_type[label]
        rows.append(
            f"| {label} {sources.TUMOUR_TYPES[label]} | {len(group)} | {group[0].id}-{group[-1].id}"
            f" | {held[0].id}-{held[-1].id} ({len(held)}) |"
        )
    files = [os.path.join(sub, f"{e.id}.png") for sub in ("images", "masks") for e in bundle]
    data_bytes = sum(os.path.getsize(os.path.join(args.out_dir, p)) for p in files)
    stride_word = {1: "single", 2: "second", 3: "third"}.get(args.stride, f"{args.stride}th")
    readme = README_TEMPLATE.format(
        size=args.size,
        count=len(bundle),
        megabytes=data_bytes / 1e6,
        heldout_percent=100 * args.heldout_fraction,
        gap=args.gap,
        stride_word=stride_word,
        rows="\n".join(rows),
    )
    with open(os.path.join(args.out_dir, "README.md"), "w") as f:
        f.write(readme)
    with open(os.path.join(args.out_dir, "sha256sums.txt"), "w") as f:
        for path in ["metadata.csv", *files]:
            f.write(f"{_sha256(os.path.join(args.out_dir, path))}  {path}\n")
    print(
        f"Wrote {len(bundle)} pairs ({data_bytes / 1e6:.2f} MB of PNG) to {args.out_dir}; "
        f"{len(heldout)} ids held out."
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
