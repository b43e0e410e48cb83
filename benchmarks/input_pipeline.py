"""Input pipeline throughput: decode + equalise + augment at 512x512, and cv2.equalizeHist alone.

    python benchmarks/input_pipeline.py  # ../shared/data/figshare_brain_tumor if present
    python benchmarks/input_pipeline.py --data_dir /path/to/kaggle_folder --max_images 500

Uses every core (tf.data AUTOTUNE). Images per second are host-side only: compare them with the
training step rate at 512x512 to see whether the input pipeline keeps the accelerator fed.
"""

import argparse
import os
import time

from bts_jax.configs import default
from bts_jax.data import InputPipeline, get_examples, preprocessing
from bts_jax.data import images as host_images

_SHARED = os.path.join(
    os.path.dirname(os.path.abspath(__file__)), "..", "..", "shared", "data", "figshare_brain_tumor"
)


def _config(data_dir: str, cache: bool, max_images: int, image_size: int):
    config = default.get_config()
    config.data.image_size = image_size
    if data_dir:
        config.data.update(source="folder", data_dir=data_dir)
    config.data.update(cache=cache, subset_size=max_images, split_method="blocked")
    config.data.augment.update(flip=True, rot90=True, affine=True, brightness_contrast=True)
    config.batch_size = 8
    return config


def _train_rate(pipeline: InputPipeline, epochs: range) -> tuple[float, int]:
    """Images/s over the given train epochs of one run's pipeline (its cache persists)."""
    n, start = 0, time.perf_counter()
    for batch in pipeline.train_epochs(epochs):
        n += len(batch["id"])
    return n / (time.perf_counter() - start), n


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data_dir", default=_SHARED if os.path.isdir(_SHARED) else "")
    parser.add_argument("--max_images", type=int, default=400, help="subset size (0 = all)")
    parser.add_argument("--image_size", type=int, default=512)
    parser.add_argument("--equalize_images", type=int, default=200, help="images for cv2 timing")
    args = parser.parse_args()
    try:  # Checked first: the pipeline's timing takes minutes before OpenCV's starts.
        import cv2
    except ImportError:
        parser.exit(
            2,
            "benchmarks/input_pipeline.py compares with OpenCV's equalizeHist, which is not "
            "installed: pip install -e '.[test]' (./run.sh test installs it)\n",
        )
    where = args.data_dir or "bundled sample"
    print(
        f"data: {where}; cores: {os.cpu_count()}; image_size {args.image_size}; batch 8; "
        "all augmentations on"
    )
    one_host = {"process_index": 0, "process_count": 1}

    config = _config(args.data_dir, False, args.max_images, args.image_size)
    pipeline = InputPipeline(config, **one_host)
    pipeline.examples("train")  # validate once, outside the timings
    rate, n = _train_rate(pipeline, range(1))
    print(
        f"train, cache off (read + decode + equalise + resize + augment):  "
        f"{rate:8.1f} images/s ({n})"
    )

    config = _config(args.data_dir, True, args.max_images, args.image_size)
    pipeline = InputPipeline(config, **one_host)
    pipeline.examples("train")
    rate, n = _train_rate(pipeline, range(1))
    print(
        f"train, cache on, first epoch (fills the cache):               {rate:8.1f} images/s ({n})"
    )
    rate, n = _train_rate(pipeline, range(1, 3))
    print(
        f"train, cache on, later epochs (augment only):                 {rate:8.1f} images/s ({n})"
    )

    images = [
        host_images.load_grayscale(e.image)
        for e in get_examples(config.data)[: args.equalize_images]
    ]
    start = time.perf_counter()
    repeats = 5
    for _ in range(repeats):
        for image in images:
            cv2.equalizeHist(image)
    rate = repeats * len(images) / (time.perf_counter() - start)
    print(
        f"cv2.equalizeHist alone (decoded uint8, {cv2.getNumThreads()} threads):   "
        f"{rate:8.1f} images/s"
    )
    start = time.perf_counter()
    for image in images:
        preprocessing.equalize_histogram(image)
    rate = len(images) / (time.perf_counter() - start)
    print(f"equalize_histogram alone, eager TF, one at a time:            {rate:8.1f} images/s")
    shapes = {i.shape for i in images}
    print(f"(equalisation timed on {len(images)} decoded images, shapes {sorted(shapes)})")


if __name__ == "__main__":
    main()
