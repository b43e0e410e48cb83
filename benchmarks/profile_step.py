r"""Where the train step's time goes: a per-operation profile of the compiled step, by category.

    python benchmarks/profile_step.py --config configs/quickstart.py          # paper model
    python benchmarks/profile_step.py --config configs/quickstart.py \
        --config.model.gsconv_in= --config.model.eca_in=                      # baseline U-Net

Any config and any ``--config.*`` override works as for the other benchmarks. The script compiles
the library's real train step (``make_train_step``: forward, BCE + soft Dice, backward, the
config's optimiser; state donated) for one fixed random batch of the config's batch and image
size, runs ``--warmup`` steps, then profiles ``--steps`` steps and prints three tables: time per
category, the top ``--top`` operations, and the top layers (module paths).

How the time of each operation is measured (the method):

1. ``jax.profiler.trace`` records the steps. XLA:CPU's runtime executes the compiled program as a
   graph of *thunks*, one per HLO operation of the entry computation (a fusion, a convolution, a
   copy, ...), and when a profiler is active it records each thunk's execution as a trace event
   carrying the HLO operation's name (stat ``hlo_op``), the program (``hlo_module``) and the
   execution (``run_id``); a thunk that finishes asynchronously (a multi-threaded Eigen
   convolution, a partitioned loop) adds an ``end: <op>`` event linked to it by a flow id. So an
   operation's interval runs from its start event to its end event. The trace is read back with
   ``jax.profiler.ProfileData`` (no TensorBoard needed; ``--trace_dir`` keeps it for XProf).
2. Independent thunks run concurrently on the CPU's threads, so intervals overlap. Each step's
   wall time is split among the operations: every instant is shared equally by the operations
   running at that instant (a sweep over the interval ends). The shares add up to the time the
   step kept at least one operation running; the rest (the runtime between operations) is
   printed as "gaps". An operation's figure is the median of its share over the profiled steps,
   which resists a step slowed down by another process on a shared machine.
3. Each operation is classified from the compiled HLO (``compiled.as_text()``): the
   instructions inside a fusion, and the source metadata (``op_name``) that JAX attaches, which
   carries the Flax module path (``enc_0/conv_0/dense/conv``) and whether the operation belongs to
   the backward pass (``transpose(jvp(...))``). A backward convolution is a kernel gradient when
   its window differs from the layer's kernel size (its window spans the feature map), else an
   input gradient. GFLOP/s are given for convolutions and dots, from their shapes (2 x output
   elements x window x input features per group; a dilated input counts its zeros, as XLA does).

On a GPU the same trace holds one event per kernel on the device's "XLA Ops" line; the script
uses those when it finds them (not checked on a GPU yet). Profiling adds a few per cent to the
step (one trace event per operation): the unprofiled median step time is printed beside it.
"""

from __future__ import annotations

import collections
import glob
import os
import statistics
import tempfile
import time
from dataclasses import dataclass

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

# The HLO parsing and classification, beside this script (its folder is sys.path[0] when run, and
# on pytest's path for the tests).
import bench_flags
import hlo_ops as hlo
import jax
import numpy as np
from absl import app, flags

FLAGS = flags.FLAGS

bench_flags.define_config_flag("configs/quickstart.py")
bench_flags.define_step_flags(5, 2, "Profiled steps.")
flags.DEFINE_integer("top", 15, "Rows of the operation and layer tables.")
flags.DEFINE_string("trace_dir", "", "Keep the trace here (for XProf/TensorBoard); default: temp.")


# ----------------------------------------------------------------------------- the trace


@dataclass
class Interval:
    """When one operation ran in one step (nanoseconds on the trace's clock)."""

    op: str
    start: float  # ns
    end: float  # ns


def op_intervals(profile, module_name: str) -> dict[int, list[Interval]]:
    """The operations' intervals of each execution (run_id) of ``module_name`` in a trace."""
    starts, ends = {}, {}
    runs: dict[int, list[Interval]] = collections.defaultdict(list)
    for plane in profile.planes:
        gpu_ops = plane.name.startswith("/device:GPU")
        for line in plane.lines:
            for event in line.events:
                stats = dict(event.stats)
                if gpu_ops and line.name == "XLA Ops":
                    run = int(stats.get("run_id", 0))
                    runs[run].append(
                        Interval(event.name, event.start_ns, event.start_ns + event.duration_ns)
                    )
                elif "hlo_op" in stats and stats.get("hlo_module", module_name) == module_name:
                    starts[stats.get("_p", id(event))] = (
                        str(stats["hlo_op"]),
                        int(stats.get("run_id", 0)),
                        event.start_ns,
                        event.start_ns + event.duration_ns,
                    )
                elif event.name.startswith("end: ") and "_c" in stats:
                    ends[stats["_c"]] = event.start_ns + event.duration_ns
    for flow, (op, run, start, end) in starts.items():
        runs[run].append(Interval(op, start, max(end, ends.get(flow, end))))
    return dict(runs)


def share_wall_time(intervals: list[Interval]) -> tuple[dict[str, float], float, float]:
    """Splits wall time among concurrent operations: (ns per op, wall ns, gap ns)."""
    points = sorted({t for i in intervals for t in (i.start, i.end)})
    shares: dict[str, float] = collections.defaultdict(float)
    order = sorted(intervals, key=lambda i: i.start)
    active: list[Interval] = []
    next_index = 0
    busy = 0.0
    for left, right in zip(points, points[1:], strict=False):
        while next_index < len(order) and order[next_index].start <= left:
            active.append(order[next_index])
            next_index += 1
        active = [i for i in active if i.end > left]
        if active:
            busy += right - left
            for i in active:
                shares[i.op] += (right - left) / len(active)
    wall = points[-1] - points[0] if points else 0.0
    return dict(shares), wall, wall - busy


# ----------------------------------------------------------------------------- the step


def build_step(config):
    """(compiled step, state, device batch, kernel shapes by layer, seconds to compile)."""
    from bts_jax.models import build_model
    from bts_jax.sharding import make_global_batch, make_mesh
    from bts_jax.train.optim import create_learning_rate_schedule, create_optimizer
    from bts_jax.train.state import create_train_state, prior_fraction
    from bts_jax.train.steps import make_train_step

    mesh = make_mesh(jax.devices()[:1])
    model = build_model(config.model, dtype=config.dtype)
    # The schedule's numbers do not change the compiled program, only its constants.
    schedule = create_learning_rate_schedule(config.optimizer, 100, 100 * config.num_epochs)
    optimizer = create_optimizer(config.optimizer, schedule)
    state = create_train_state(
        config, model, optimizer, mesh, train_fraction=prior_fraction(config)
    )
    rng = np.random.default_rng(0)
    b, s = int(config.batch_size), int(config.data.image_size)
    batch = {
        "image": rng.standard_normal((b, s, s, 1)).astype(np.float32),
        "mask": (rng.random((b, s, s)) < 0.3).astype(np.int32),
        "valid": np.ones((b,), bool),
    }
    device_batch = make_global_batch(batch, mesh)
    start = time.perf_counter()
    compiled = make_train_step(config, model, optimizer, mesh).lower(state, device_batch).compile()
    compile_s = time.perf_counter() - start
    kernels = {}
    for path, leaf in jax.tree_util.tree_flatten_with_path(state.params)[0]:
        keys = [getattr(k, "key", str(k)) for k in path]
        if keys[-1] == "kernel":
            kernels["/".join(keys[:-1])] = tuple(leaf.shape)
    return compiled, state, device_batch, kernels, compile_s


def profile_steps(compiled, state, batch, steps: int, warmup: int, trace_dir: str = ""):
    """Runs and traces ``steps`` steps; returns (ProfileData, unprofiled and profiled seconds).

    The trace is written to ``trace_dir`` (kept), or to a temporary folder (deleted).
    """
    if not trace_dir:
        with tempfile.TemporaryDirectory() as tmp:
            return profile_steps(compiled, state, batch, steps, warmup, tmp)
    for _ in range(warmup):
        state, step_metrics = compiled(state, batch)
        jax.block_until_ready(step_metrics)
    plain, traced = [], []
    for _ in range(steps):
        start = time.perf_counter()
        state, step_metrics = compiled(state, batch)
        jax.block_until_ready(step_metrics)
        plain.append(time.perf_counter() - start)
    with jax.profiler.trace(trace_dir):
        for _ in range(steps):
            start = time.perf_counter()
            state, step_metrics = compiled(state, batch)
            jax.block_until_ready(step_metrics)
            traced.append(time.perf_counter() - start)
    files = sorted(glob.glob(os.path.join(trace_dir, "**", "*.xplane.pb"), recursive=True))
    if not files:
        raise SystemExit(f"jax.profiler wrote no trace under {trace_dir}")
    profile = jax.profiler.ProfileData.from_file(files[-1])
    return profile, plain, traced


@dataclass
class Row:
    """One line of a table: a category, an operation or a layer."""

    name: str
    ms: float
    share: float
    count: int = 1
    category: str = ""
    layer: str = ""
    detail: str = ""
    gflops_per_s: float | None = None


def breakdown(module: hlo.Module, kernels, runs: dict[int, list[Interval]]):
    """Per-op median ms/step, their classification, median wall and gap (ms)."""
    per_op: dict[str, list[float]] = collections.defaultdict(list)
    walls, gaps = [], []
    for intervals in runs.values():
        shares, wall, gap = share_wall_time(intervals)
        walls.append(wall / 1e6)
        gaps.append(gap / 1e6)
        for op in {i.op for i in intervals}:
            per_op[op].append(shares.get(op, 0.0) / 1e6)
    ms = {op: statistics.median(values) for op, values in per_op.items()}
    info = {op: hlo.classify(module, op, kernels) for op in ms}
    return ms, info, statistics.median(walls), statistics.median(gaps)


def tables(ms: dict[str, float], info: dict[str, hlo.OpInfo], top: int):
    """(category rows, top-op rows, top-layer rows)."""
    total = sum(ms.values()) or 1.0
    by_category: dict[str, list[str]] = collections.defaultdict(list)
    for op, op_info in info.items():
        by_category[op_info.category].append(op)
    categories = []
    for category in hlo.CATEGORIES:
        ops = by_category.get(category, [])
        if ops:
            t = sum(ms[op] for op in ops)
            categories.append(Row(category, t, t / total, len(ops)))
    ops_rows = []
    for op in sorted(ms, key=ms.get, reverse=True)[:top]:
        op_info = info[op]
        rate = op_info.flops / (ms[op] * 1e6) if op_info.flops and ms[op] > 0 else None
        ops_rows.append(
            Row(op, ms[op], ms[op] / total, 1, op_info.category, op_info.layer, op_info.detail)
        )
        ops_rows[-1].gflops_per_s = rate
    by_layer: dict[str, float] = collections.defaultdict(float)
    counts: dict[str, int] = collections.defaultdict(int)
    for op, op_info in info.items():
        # The layer: the block (e.g. enc_0/conv_0) rather than its leaf module.
        key = "/".join(op_info.layer.split("/")[:2]) if op_info.layer else f"({op_info.category})"
        by_layer[key] += ms[op]
        counts[key] += 1
    layers = [
        Row(name, t, t / total, counts[name])
        for name, t in sorted(by_layer.items(), key=lambda kv: kv[1], reverse=True)[:top]
    ]
    return categories, ops_rows, layers


def format_table(head: list[str], rows: list[list[str]]) -> str:
    """A Markdown table."""
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def report(config, compile_s, plain, traced, ms, info, wall, gap, top) -> str:
    """The printed report."""
    categories, ops_rows, layers = tables(ms, info, top)
    total = sum(ms.values())
    lines = [
        f"devices: {jax.devices()[0].device_kind} ({jax.default_backend()}); jax {jax.__version__}",
        f"model: features={tuple(config.model.features)} gsconv_in={config.model.gsconv_in!r} "
        f"eca_in={config.model.eca_in!r} dtype={config.dtype} "
        f"depthwise_impl={config.model.get('depthwise_impl', 'auto')} "
        f"upsample_impl={config.model.get('upsample_impl', 'auto')}",
        f"input: {config.data.image_size}x{config.data.image_size}, batch {config.batch_size}",
        f"compile: {compile_s:.1f} s",
        f"step time: median {1e3 * statistics.median(plain):.1f} ms unprofiled, "
        f"{1e3 * statistics.median(traced):.1f} ms profiled ({len(traced)} steps); "
        f"traced wall {wall:.1f} ms = operations {total:.1f} ms + gaps {gap:.1f} ms",
        "",
        "Time per category (median ms per step; share of the operations' time):",
        format_table(
            ["category", "ms/step", "share", "operations"],
            [[r.name, f"{r.ms:.1f}", f"{100 * r.share:.1f}%", str(r.count)] for r in categories],
        ),
        "",
        f"Top {top} operations:",
        format_table(
            ["operation", "category", "layer", "ms/step", "share", "GFLOP/s", "what"],
            [
                [
                    r.name,
                    r.category,
                    r.layer or "-",
                    f"{r.ms:.2f}",
                    f"{100 * r.share:.1f}%",
                    f"{r.gflops_per_s:.1f}" if r.gflops_per_s else "-",
                    r.detail,
                ]
                for r in ops_rows
            ],
        ),
        "",
        f"Top {top} layers (block path; operations outside the model by category):",
        format_table(
            ["layer", "ms/step", "share", "operations"],
            [[r.name, f"{r.ms:.1f}", f"{100 * r.share:.1f}%", str(r.count)] for r in layers],
        ),
    ]
    return "\n".join(lines)


def main(argv):
    del argv
    config = FLAGS.config
    if FLAGS.steps < 1 or FLAGS.warmup < 0:
        raise app.UsageError("--steps must be >= 1 and --warmup >= 0")
    compiled, state, batch, kernels, compile_s = build_step(config)
    module = hlo.parse_hlo(compiled.as_text())
    profile, plain, traced = profile_steps(
        compiled, state, batch, FLAGS.steps, FLAGS.warmup, FLAGS.trace_dir
    )
    runs = op_intervals(profile, module.name)
    if not runs:
        raise SystemExit("The trace holds no per-operation events for the train step.")
    ms, info, wall, gap = breakdown(module, kernels, runs)
    print(report(config, compile_s, plain, traced, ms, info, wall, gap, FLAGS.top))


if __name__ == "__main__":
    app.run(main)
