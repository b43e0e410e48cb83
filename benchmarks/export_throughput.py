"""Compares the exported model with predict_masks: start-up time and images/s, same images.

    JAX_PLATFORMS=cpu python benchmarks/export_throughput.py --workdir workdirs/quickstart

Exports the workdir (jax.export artifact and TF SavedModel) into ``--export_dir`` (a temporary
folder by default) unless it holds an export already, then times on the bundled 512x512 images:

- start-up: `bts_jax.workdir.load_trained_model` (config, Flax model, Orbax restore) against
  `bts_jax.inference.export.load_exported` (JSON and deserialisation), and TF's SavedModel load;
- end to end (uint8 images in, masks at the input size out, preprocessing included):
  `bts_jax.inference.predict_masks` against `ExportedModel.predict_masks`;
- the forward pass alone on a preprocessed batch: the jitted Flax apply, the exported function
  and the SavedModel.

Compilation is excluded (one untimed call first); figures are medians of ``--repeats`` runs.
"""

import os
import statistics
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import jax
import numpy as np
from absl import app, flags

from bts_jax import data as data_lib
from bts_jax import inference
from bts_jax import workdir as workdir_lib
from bts_jax.cli import flags as cli_flags
from bts_jax.cli.startup import quiet_library_logs
from bts_jax.inference import export
from bts_jax.inference import predict as predict_lib

FLAGS = flags.FLAGS
cli_flags.define_workdir_flag("A trained workdir.")
flags.DEFINE_string("export_dir", None, "Export folder to use or fill (default: a temp folder).")
cli_flags.define_num_images_flag(32, "Images per timed run (bundled images, repeated).")
cli_flags.define_batch_size_flag()
flags.DEFINE_integer("repeats", 3, "Timed runs; the median is reported.")


def timed(fn, repeats: int) -> float:
    """Median wall-clock seconds of ``fn()`` over ``repeats`` calls, after one untimed call."""
    jax.block_until_ready(fn())
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(fn())
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def once(fn) -> tuple[float, object]:
    """Seconds of one call, and its result."""
    start = time.perf_counter()
    result = fn()
    return time.perf_counter() - start, result


def main(argv):
    del argv
    quiet_library_logs()
    import tensorflow as tf

    directory = FLAGS.export_dir or tempfile.mkdtemp(prefix="bts_export_")
    if not os.path.isfile(os.path.join(directory, export.EXPORT_FILE)):
        export_s, _ = once(lambda: export.export_workdirs(FLAGS.workdir, directory))
        print(f"exported to {directory} in {export_s:.1f} s")
    folder = os.path.join(data_lib.SAMPLE_DIR, "images")
    sample = [data_lib.load_grayscale(os.path.join(folder, n)) for n in sorted(os.listdir(folder))]
    images = [sample[i % len(sample)] for i in range(FLAGS.num_images)]
    n, b = len(images), FLAGS.batch_size

    load_flax, (config, model, variables) = once(
        lambda: workdir_lib.load_trained_model(FLAGS.workdir)
    )
    load_export, loaded = once(lambda: export.load_exported(directory))
    saved_path = os.path.join(directory, export.SAVED_MODEL_DIR)
    load_tf, saved = once(lambda: tf.saved_model.load(saved_path))  # written by export_workdirs

    flax_masks = timed(
        lambda: inference.predict_masks(model, variables, images, config.data, batch_size=b),
        FLAGS.repeats,
    )
    export_masks = timed(lambda: loaded.predict_masks(images, batch_size=b), FLAGS.repeats)
    same = all(
        np.array_equal(x, y)
        for x, y in zip(
            inference.predict_masks(model, variables, images, config.data, batch_size=b),
            loaded.predict_masks(images, batch_size=b),
            strict=True,
        )
    )

    batch = np.stack([data_lib.preprocess_image(i, config.data) for i in images[:b]])
    members = [(model, variables)]
    flax_forward = timed(lambda: predict_lib._forward(model, variables, batch, "none"), 5)
    export_forward = timed(lambda: loaded(batch), 5)
    tf_forward = timed(lambda: saved.probabilities(tf.constant(batch)).numpy(), 5)
    check = np.abs(inference.batch_probabilities(members, batch) - loaded(batch)).max()

    size = config.data.image_size
    print(f"backend: {jax.default_backend()} ({jax.devices()[0].device_kind}), model input {size}")
    print(f"images: {n} x 512x512, batch {b}; same masks: {same}; max |dp| = {check:.1e}")
    print("| | predict_masks (Flax) | exported (jax.export) | TF SavedModel |")
    print("|---|---|---|---|")
    print(f"| start-up (s) | {load_flax:.2f} | {load_export:.2f} | {load_tf:.2f} |")
    print(f"| end to end (images/s) | {n / flax_masks:.1f} | {n / export_masks:.1f} | - |")
    print(
        f"| forward only (images/s) | {b / flax_forward:.1f} | {b / export_forward:.1f} | "
        f"{b / tf_forward:.1f} |"
    )


if __name__ == "__main__":
    app.run(main)
