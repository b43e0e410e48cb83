"""Training images/s of K seeds in one program (``config.num_seeds = K``) vs K runs one by one.

For each K, times the jitted train step of a K-seed run (vmapped over the seeds, see
``bts_jax.train.steps.make_seeds_train_step``) and, on the same machine right after, K
single-seed runs
of the same config one after another, and prints a table:

    python benchmarks/seeds_throughput.py                  # quickstart widths at 64 px, K=1,2,4,8
    python benchmarks/seeds_throughput.py --config.data.image_size=96 --num_seeds=1,4

Both sides run the step on the same host batches (the first batches of the config's training
input, fed to every seed): the input pipeline, evaluation and checkpoints are left out, and so is
compilation (timed apart). Figures are images per second over ``--steps`` steps after
``--warmup``, blocking once at the end; on a shared CPU they are noisy.

Measured on 2 CPU cores shared with other training runs (nice 19), quickstart widths (16-128) at
64 px, batch 4 per seed, 6 timed steps (``python benchmarks/seeds_throughput.py --steps=6
--warmup=1``); no GPU was lent for this measurement:

    | K | images/s, K seeds in one program | images/s, K runs one by one | ratio | 2nd pass |
    |---|---|---|---|---|
    | 1 | 17.7 | 11.5 | 1.54 | 10.6 / 8.5 = 1.25 |
    | 2 | 5.7 | 7.7 | 0.74 | 7.2 / 7.4 = 0.97 |
    | 4 | 6.4 | 9.0 | 0.71 | 20.2 / 28.9 = 0.70 |
    | 8 | 17.5 | 30.7 | 0.57 | 3.9 / 5.3 = 0.73 |

The K=1 row runs the same program on both sides, so its ratio shows the noise of that machine
(the load changed during the run; compare ratios within a row only). On CPU the seeds in one
program were slower than one by one at every K > 1. Not profiled; a likely cause is that the
vmapped step's convolutions become grouped convolutions (one group per seed), which XLA's CPU
backend may run less efficiently than K ordinary ones. On a GPU, where one small model leaves the
device partly idle, batching seeds may pay off; measure it with this script before relying on it.
"""

import os
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import bench_flags
import jax
import jax.numpy as jnp
from absl import app, flags

from bts_jax import train as train_lib
from bts_jax.sharding import make_global_batch, make_seed_batch
from bts_jax.train.state import create_seed_train_states, create_train_state, prior_fraction

FLAGS = flags.FLAGS
bench_flags.define_config_flag("configs/quickstart.py")
flags.DEFINE_list("num_seeds", ["1", "2", "4", "8"], "Values of K to time.")
bench_flags.define_image_size_flag(64, "config.data.image_size (0 keeps the config's).")
bench_flags.define_step_flags(8, 2, "Timed steps per run.")


def host_batches(config, count: int) -> list[dict]:
    """The first ``count`` training batches of ``config`` (cycled if the epoch is shorter)."""
    batches = []
    while len(batches) < count:
        for batch in train_lib.make_input_pipeline(config).train_batches(start_step=0):
            batches.append(batch)
            if len(batches) == count:
                break
    return batches


def compile_step(train_fn, state, make_batch, batch) -> tuple[float, object]:
    """(compile seconds, the compiled step) for this state and batch layout."""
    start = time.perf_counter()
    compiled = train_fn.lower(state, make_batch(batch)).compile()
    return time.perf_counter() - start, compiled


def time_steps(compiled, state, make_batch, batches, warmup: int) -> float:
    """Seconds for the timed steps of a compiled step.

    ``warmup`` steps run untimed; then every other batch is timed, with one block at the end so
    the host keeps feeding the device as the trainer does.
    """
    for batch in batches[:warmup]:
        state, _ = compiled(state, make_batch(batch))
    # The state, not a step's metrics: with warmup=0 no step has run yet.
    jax.block_until_ready(state)
    start = time.perf_counter()
    for batch in batches[warmup:]:
        state, step_metrics = compiled(state, make_batch(batch))
    jax.block_until_ready(step_metrics)
    return time.perf_counter() - start


def together(config, num_seeds: int, batches: list[dict]) -> tuple[float, float]:
    """(compile s, images/s) of ``num_seeds`` seeds in one program."""
    config = config.copy_and_resolve_references()
    config.num_seeds = num_seeds
    run = train_lib.setup_run(config)
    if num_seeds == 1:
        state = create_train_state(
            config, run.model, run.optimizer, run.mesh, train_fraction=prior_fraction(config)
        )

        def make_batch(batch):
            return make_global_batch(batch, run.mesh)

    else:
        # The seeds of one config train on one split: one fraction for all.
        fraction = prior_fraction(config)
        fractions = None if fraction is None else [fraction] * num_seeds
        state = create_seed_train_states(
            config, run.model, run.optimizer, run.mesh, train_fractions=fractions
        )

        def make_batch(batch):
            return make_seed_batch([batch] * num_seeds, run.mesh)

    compile_s, compiled = compile_step(run.train_fn, state, make_batch, batches[0])
    seconds = time_steps(compiled, state, make_batch, batches, FLAGS.warmup)
    timed = len(batches) - FLAGS.warmup
    return compile_s, num_seeds * timed * config.batch_size / seconds


class OneByOne:
    """K single-seed runs one after another, sharing one compiled step.

    Each run would compile the same program once; compilation is left out on both sides. The runs
    start from copies of one initial state (the values do not change the time of a step).
    """

    def __init__(self, config, batch: dict):
        self.config = config
        self.run = train_lib.setup_run(config)
        run, fraction = self.run, prior_fraction(config)
        self.initial = create_train_state(
            config, run.model, run.optimizer, run.mesh, train_fraction=fraction
        )
        _, self.compiled = compile_step(self.run.train_fn, self.initial, self.make_batch, batch)

    def make_batch(self, batch: dict) -> dict:
        """The global batch of one host batch."""
        return make_global_batch(batch, self.run.mesh)

    def images_per_s(self, num_seeds: int, batches: list[dict]) -> float:
        """Images/s of ``num_seeds`` runs, each of ``len(batches)`` steps, one by one."""
        seconds = 0.0
        for _ in range(num_seeds):
            state = jax.tree_util.tree_map(jnp.copy, self.initial)  # the step donates its state
            seconds += time_steps(self.compiled, state, self.make_batch, batches, FLAGS.warmup)
        timed = len(batches) - FLAGS.warmup
        return num_seeds * timed * self.config.batch_size / seconds


def main(argv):
    del argv
    config = FLAGS.config
    if FLAGS.image_size:
        config.data.image_size = FLAGS.image_size
    config.num_seeds = 1
    batches = host_batches(config, FLAGS.warmup + FLAGS.steps)
    print(
        f"devices: {jax.device_count()} x {jax.devices()[0].device_kind} ({jax.default_backend()})"
    )
    print(
        f"model: features={tuple(config.model.features)} dtype={config.dtype}; input "
        f"{config.data.image_size}x{config.data.image_size}, batch {config.batch_size} per seed; "
        f"{FLAGS.steps} timed steps"
    )
    print(
        "| K | images/s, K seeds in one program | images/s, K runs one by one | ratio | compile s |"
    )
    print("|---|---|---|---|---|")
    one_by_one = OneByOne(config, batches[0])
    for num_seeds in (int(k) for k in FLAGS.num_seeds):
        compile_s, vmapped = together(config, num_seeds, batches)
        sequential = one_by_one.images_per_s(num_seeds, batches)
        print(
            f"| {num_seeds} | {vmapped:.1f} | {sequential:.1f} | {vmapped / sequential:.2f} | "
            f"{compile_s:.1f} |",
            flush=True,
        )


if __name__ == "__main__":
    app.run(main)
