"""What each recipe part costs per train step: one setting changed at a time, against the config's.

    python benchmarks/recipe_costs.py --config configs/quickstart_v1.py --steps 10 --rounds 3

Each variant is the config with one recipe part changed (``--variants``: ``name=field=value``
items separated by ``;``). All are compiled first, then timed in ``--rounds`` rounds, every round
timing ``--steps`` steps of each variant in turn (A B C ... A B C ...), so a machine whose speed
drifts slows every variant alike. The table gives each variant's median step time over all its
timed steps and its ratio to the first variant's (the reference), round by round.
"""

import ast
import os
import statistics
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import bench_flags
import jax
from absl import app, flags

from bts_jax import train as train_lib
from bts_jax.config_tools import apply_overrides
from bts_jax.sharding import make_global_batch
from bts_jax.train.state import create_train_state, prior_fraction

FLAGS = flags.FLAGS
bench_flags.define_config_flag("configs/quickstart.py")
bench_flags.define_step_flags(10, 2, "Timed steps of each variant in each round.")
flags.DEFINE_integer("rounds", 3, "Rounds of timing; each times every variant once.")
flags.DEFINE_string(
    "variants",
    "batch norm=model.norm=batch;"
    "group(8)=model.norm=group(8);"
    "EMA 0.999=ema_decay=0.999;"
    "focal + per-image Dice=loss.name=focal(gamma=2):1,dice(per_image=true):1;"
    "adamw=optimizer.name=adamw;"
    "all ops=data.augmentations=flip|rot90|affine|brightness_contrast|gamma|noise",
    "Variants, ';'-separated: 'label=field=value' (the first is the reference).",
)


def literal(text: str):
    """A Python literal where the text is one (``0.999``), else the text itself (``adamw``)."""
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text


def parse_variants(text: str) -> list[tuple[str, str, str]]:
    """``'label=field=value;...'`` as ``[(label, field, value), ...]``; the value may hold '='."""
    variants = []
    for item in filter(None, (part.strip() for part in text.split(";"))):
        label, field, value = item.split("=", 2)
        variants.append((label.strip(), field.strip(), value.strip()))
    if not variants:
        raise app.UsageError("--variants names no variant")
    return variants


class Timed:
    """One variant compiled on the config's devices, with its own input pipeline and state."""

    def __init__(self, config):
        self.run = train_lib.setup_run(config)
        run, fraction = self.run, prior_fraction(config)
        self.state = create_train_state(
            config, run.model, run.optimizer, run.mesh, train_fraction=fraction
        )
        pipeline = train_lib.make_input_pipeline(config)
        self.batches = iter(pipeline.train_batches(start_step=0))
        first = make_global_batch(next(self.batches), self.run.mesh)
        self.step = self.run.train_fn.lower(self.state, first).compile()

    def time_steps(self, steps: int) -> list[float]:
        """Seconds of each of ``steps`` steps, each blocked on."""
        times = []
        for _ in range(steps):
            batch = make_global_batch(next(self.batches), self.run.mesh)
            start = time.perf_counter()
            self.state, metrics = self.step(self.state, batch)
            jax.block_until_ready(metrics)
            times.append(time.perf_counter() - start)
        return times


def main(argv):
    del argv
    variants = parse_variants(FLAGS.variants)
    timed = {}
    for label, field, value in variants:
        config = apply_overrides(FLAGS.config, {field: literal(value)}, f"--variants {label}")
        timed[label] = Timed(config)
        timed[label].time_steps(FLAGS.warmup)
    steps = {label: [] for label in timed}
    for _ in range(FLAGS.rounds):
        for label, variant in timed.items():
            steps[label].extend(variant.time_steps(FLAGS.steps))
    reference = statistics.median(steps[variants[0][0]])
    config = FLAGS.config
    print(
        f"{config.data.image_size}x{config.data.image_size}, global batch {config.batch_size}, "
        f"{jax.device_count()} x {jax.devices()[0].device_kind}; {FLAGS.rounds} rounds of "
        f"{FLAGS.steps} steps per variant, alternated"
    )
    print("| variant | setting | median step (ms) | vs the first |")
    print("|---|---|---:|---:|")
    for label, field, value in variants:
        median = statistics.median(steps[label])
        print(f"| {label} | `{field}={value}` | {median * 1e3:.1f} | {median / reference:.2f}x |")


if __name__ == "__main__":
    app.run(main)
