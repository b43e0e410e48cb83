"""Measures the train step: images/s, step time, time waiting for input, peak device memory.

Runs the real input pipeline and the jitted, data-parallel train step on whatever devices are
present (every GPU of the host, or the CPU):

    python benchmarks/train_throughput.py --config configs/default.py \
        --config.data.image_size=512 --config.batch_size=8 --config.dtype=bfloat16
    python benchmarks/train_throughput.py --config configs/quickstart.py   # CPU-sized

Compilation is timed apart; the figures are medians over ``--steps`` steps after ``--warmup``.
"""

import os
import statistics
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import bench_flags
import jax
from absl import app, flags

from bts_jax import train as train_lib
from bts_jax.sharding import make_global_batch
from bts_jax.train.state import create_train_state, prior_fraction

FLAGS = flags.FLAGS
bench_flags.define_config_flag("configs/default.py")
bench_flags.define_step_flags(20, 3)


def batches_forever(config):
    """Training batches of the run's one input pipeline, restarted if the run's steps run out."""
    pipeline = train_lib.make_input_pipeline(config)
    while True:
        yield from pipeline.train_batches(start_step=0)


def peak_memory_gib() -> str:
    """Peak bytes in use on device 0, where the platform reports it."""
    stats = jax.local_devices()[0].memory_stats() or {}
    peak = stats.get("peak_bytes_in_use")
    return "n/a (platform does not report)" if peak is None else f"{peak / 2**30:.2f} GiB"


def main(argv):
    del argv
    if FLAGS.steps < 1 or FLAGS.warmup < 0:
        raise app.UsageError("--steps must be >= 1 and --warmup >= 0")
    config = FLAGS.config
    run = train_lib.setup_run(config)
    state = create_train_state(
        config, run.model, run.optimizer, run.mesh, train_fraction=prior_fraction(config)
    )
    batches = batches_forever(config)

    start = time.perf_counter()
    first = make_global_batch(next(batches), run.mesh)
    compiled = run.train_fn.lower(state, first).compile()
    compile_s = time.perf_counter() - start

    for _ in range(FLAGS.warmup):
        state, _ = compiled(state, make_global_batch(next(batches), run.mesh))
    # The state, not the last step's metrics: with --warmup=0 no step has run yet.
    jax.block_until_ready(state)

    step_times, wait_times = [], []
    for _ in range(FLAGS.steps):
        t0 = time.perf_counter()
        local = next(batches)
        t1 = time.perf_counter()
        state, step_metrics = compiled(state, make_global_batch(local, run.mesh))
        # Blocking each step makes step times honest; the trainer itself does not block.
        jax.block_until_ready(step_metrics)
        t2 = time.perf_counter()
        wait_times.append(t1 - t0)
        step_times.append(t2 - t0)

    step_s = statistics.median(step_times)
    size = config.data.image_size
    print(
        f"devices: {jax.device_count()} x {jax.devices()[0].device_kind} ({jax.default_backend()})"
    )
    print(
        f"model: features={tuple(config.model.features)} gsconv_in={config.model.gsconv_in!r} "
        f"eca_in={config.model.eca_in!r} dtype={config.dtype}"
    )
    print(f"input: {size}x{size}, global batch {config.batch_size}")
    print(f"compile: {compile_s:.1f} s")
    print(f"step time (median of {FLAGS.steps}): {step_s * 1e3:.1f} ms")
    print(f"throughput: {config.batch_size / step_s:.1f} images/s")
    # The total and the maximum include epoch boundaries, so a pipeline that stalls at each
    # epoch's start shows here even when the median is near zero.
    print(
        f"waiting for input: {100 * sum(wait_times) / sum(step_times):.1f}% of step time in all, "
        f"median {statistics.median(wait_times) * 1e3:.1f} ms, "
        f"max {max(wait_times) * 1e3:.1f} ms per step"
    )
    print(f"peak device memory: {peak_memory_gib()}")


if __name__ == "__main__":
    app.run(main)
