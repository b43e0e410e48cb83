"""TFDS builder ``brain_tumor_segmentation``: the Kaggle/figshare pairs as a TFDS dataset.

Nothing is downloaded: the user downloads the Kaggle archive, extracts it, and points
``manual_dir`` at it. One split, ``train``, holds every pair; ``bts_jax`` applies its own id-block
splits on top.

Prepare once, then train from it::

    python -c "from bts_jax.data import tfds_builder; \
        tfds_builder.prepare('/data/tfds', manual_dir='/data/brain_tumor_kaggle')"
    python train.py --config configs/default.py --workdir workdirs/tfds \
        --config.data.source=tfds --config.data.data_dir=/data/tfds
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import numpy as np
import tensorflow_datasets as tfds
from etils import epath

from bts_jax.data import sources
from bts_jax.data.images import load_grayscale

_CITATION = """\
@article{cheng2015enhanced,
  title={Enhanced performance of brain tumor classification via tumor region augmentation and
         partition},
  author={Cheng, Jun and Huang, Wei and Cao, Shuangliang and Yang, Ru and Yang, Wei and Yun,
  Zhaoqiang
          and Wang, Zhijian and Feng, Qianjin},
  journal={PLoS One}, volume={10}, number={10}, pages={e0140381}, year={2015}
} @article{cheng2016retrieval,
  title={Retrieval of brain tumors by adaptive spatial pooling and Fisher vector representation},
  author={Cheng, Jun and Yang, Wei and Huang, Meiyan and Huang, Wei and Jiang, Jun and Zhou, Yujia
  and
          Yang, Ru and Zhao, Jie and Feng, Yanqiu and Feng, Qianjin and Chen, Wufan},
  journal={PLoS One}, volume={11}, number={6}, pages={e0157112}, year={2016}
}
"""


def find_layout_root(path: str) -> str:
    """Finds the folder holding ``images/`` and ``masks/`` at ``path`` or up to two levels below it.

    Kaggle archives often extract into a subfolder, so ``manual_dir`` may point above the layout.

    Args:
      path: the manual download folder.

    Returns:
      The folder with ``images/`` and ``masks/``.

    Raises:
      FileNotFoundError: no such folder (the message lists what is expected).
    """
    candidates = [path]
    for _ in range(2):
        if any(
            os.path.isdir(os.path.join(c, "images")) and os.path.isdir(os.path.join(c, "masks"))
            for c in candidates
        ):
            break
        candidates = [
            os.path.join(c, d)
            for c in candidates
            if os.path.isdir(c)
            for d in sorted(os.listdir(c))
            if os.path.isdir(os.path.join(c, d))
        ]
    for c in candidates:
        if os.path.isdir(os.path.join(c, "images")) and os.path.isdir(os.path.join(c, "masks")):
            return c
    raise FileNotFoundError(
        f"No folder with images/ and masks/ at or below {path} (the manual_dir). "
        + BrainTumorSegmentation.MANUAL_DOWNLOAD_INSTRUCTIONS
    )


class BrainTumorSegmentation(tfds.core.GeneratorBasedBuilder):
    """Brain MRI slices with binary tumour masks (figshare / Kaggle brain tumour segmentation)."""

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "First release: image, mask, id, tumor_type; one split `train`."}
    MANUAL_DOWNLOAD_INSTRUCTIONS = """
    Download the Kaggle dataset `nikhilroxtomar/brain-tumor-segmentation`
    (https://www.kaggle.com/datasets/nikhilroxtomar/brain-tumor-segmentation), extract the archive
    and pass the extracted folder as `manual_dir`. It must contain (at most two levels down)
    `images/<id>.png` and `masks/<id>.png`; an optional `metadata.csv` with columns `id,label` (1
    meningioma, 2 glioma, 3 pituitary) adds the tumour type. Nothing is fetched from the network.
    """

    @tfds.core.utils.classproperty
    @classmethod
    def code_path(cls) -> epath.Path:
        """This file.

        TFDS otherwise locates it through `importlib_resources`, which TFDS 4.9 imports without
        declaring it as a dependency on Python >= 3.9. Only used to look for a checksums file (there
        is none: nothing is downloaded).
        """
        return epath.Path(__file__)

    def _info(self) -> tfds.core.DatasetInfo:
        return tfds.core.DatasetInfo(
            builder=self,
            description=(
                "T1-weighted contrast-enhanced brain MRI slices (Cheng et al., figshare "
                "10.6084/m9.figshare.1512427, CC BY 4.0) with binary tumour masks, as 8-bit "
                "grayscale."
            ),
            features=tfds.features.FeaturesDict(
                {
                    "image": tfds.features.Image(
                        shape=(None, None, 1), dtype=np.uint8, encoding_format="png"
                    ),
                    # Stored as in the source files (0/255); the pipeline binarises with > 127.
                    "mask": tfds.features.Image(
                        shape=(None, None, 1), dtype=np.uint8, encoding_format="png"
                    ),
                    "id": tfds.features.Text(),
                    # Index 0 = unknown (no metadata.csv row), so indices match figshare labels.
                    "tumor_type": tfds.features.ClassLabel(names=list(sources.TUMOUR_TYPES)),
                }
            ),
            supervised_keys=("image", "mask"),
            homepage="https://doi.org/10.6084/m9.figshare.1512427",
            citation=_CITATION,
        )

    def _split_generators(self, dl_manager: tfds.download.DownloadManager):
        root = find_layout_root(os.fspath(dl_manager.manual_dir))
        return {"train": self._generate_examples(root)}

    def _generate_examples(self, root: str) -> Iterator[tuple[str, dict]]:
        examples = sources.list_folder(root, setting="the TFDS manual_dir")
        sources.validate_examples(examples, strict_masks=False)
        for ex in examples:
            yield (
                ex.id,
                {
                    "image": load_grayscale(ex.image)[..., None],
                    "mask": load_grayscale(ex.mask)[..., None],
                    "id": ex.id,
                    "tumor_type": ex.label,
                },
            )


def prepare(data_dir: str, manual_dir: str) -> BrainTumorSegmentation:
    """Builds the TFDS dataset from an extracted Kaggle folder (no network access).

    Args:
      data_dir: the TFDS data folder to write (``config.data.data_dir`` with ``source="tfds"``).
      manual_dir: the extracted Kaggle archive.

    Returns:
      The prepared builder.
    """
    builder = BrainTumorSegmentation(data_dir=data_dir)
    builder.download_and_prepare(
        download_config=tfds.download.DownloadConfig(manual_dir=os.fspath(manual_dir))
    )
    return builder


def read_examples(data_dir: str) -> list[sources.Example]:
    """Reads a prepared dataset as `Example` records holding the encoded PNG bytes (no decoding).

    Args:
      data_dir: the TFDS data folder given to `prepare`.

    Returns:
      The examples, sorted by id.

    Raises:
      FileNotFoundError: the dataset was not prepared in ``data_dir``.
    """
    builder = BrainTumorSegmentation(data_dir=data_dir)
    if not builder.is_prepared():
        raise FileNotFoundError(
            f"No prepared brain_tumor_segmentation dataset in {data_dir} (config.data.data_dir). "
            "Prepare it first: bts_jax.data.tfds_builder.prepare(data_dir, manual_dir)."
        )
    skip = tfds.decode.SkipDecoding()
    ds = builder.as_dataset(
        split="train", shuffle_files=False, decoders={"image": skip, "mask": skip}
    )
    examples = [
        sources.Example(
            id=ex["id"].decode(),
            label=int(ex["tumor_type"]),
            image=bytes(ex["image"]),
            mask=bytes(ex["mask"]),
        )
        for ex in tfds.as_numpy(ds)
    ]
    return sorted(examples, key=lambda e: sources.id_sort_key(e.id))
