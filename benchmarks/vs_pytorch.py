"""bts_jax's train step against a PyTorch twin of the same network, timed side by side.

For each size and model (the baseline U-Net and the paper's GSConv + ECA model) this script

1. builds the model with the library (``bts_jax.models.build_model``) and its real jitted train step
   (forward, BCE + soft Dice loss, backward, Adam; state donated), and the PyTorch twin of
   benchmarks/torch_unet.py from the *same* initial weights;
2. checks that both compute the same thing: the logits in eval mode and in train mode (batch
   statistics) must agree to a relative error below ``--tolerance`` (printed); on a mismatch it
   stops without timing anything;
3. times the full train step of every implementation in turn within one process (JAX float32,
   JAX bfloat16, PyTorch eager, PyTorch ``torch.compile``; eager PyTorch also under bfloat16
   ``torch.autocast`` where ``--dtypes`` names bfloat16), ``--repeats`` rounds of ``--steps``
   steps each after ``--warmup`` untimed steps, and prints one table: median images/s and the
   min-max over rounds, the ratio to PyTorch eager in the row's dtype (bfloat16 rows against
   autocast), achieved GFLOP/s (the float32 step's FLOPs from XLA's cost analysis, the same count
   for every row), and on a GPU the fraction of the device's peak (MFU) and the peak memory.

PyTorch is an optional extra, never a runtime dependency. On the project's CPU machines::

    python -m venv /work/venvs/bench && /work/venvs/bench/bin/pip install -e ".[bench]"
    /work/venvs/bench/bin/python benchmarks/vs_pytorch.py --sizes=test,quickstart,issue

The ``[bench]`` extra pins ``torch==2.13.0``, which pip takes from the CPU wheel on the machine's
disk; an unpinned ``torch`` would download a multi-GB CUDA build. ``--frameworks=jax`` (or
``torch``) times one side only, so whole processes can be paired A B A B by an outside timer; it
needs no PyTorch installed.

Sizes: ``test`` = configs/test.py (widths 4-32, 32x32, batch 8), ``quickstart`` =
configs/quickstart.py (widths 16-128, 96x96, batch 4), ``issue`` = quickstart widths at 128x128,
batch 8 (the issue's measurement), ``wide`` = widths 32-256 at 128x128, batch 8 (where the gap to
PyTorch was widest); ``--features/--image_size/--batch`` give one custom size instead.

``--depthwise_impls=grouped,dense,shifted`` times the paper model once per formulation of GSConv's
depthwise convolution (``config.model.depthwise_impl``; the default ``auto`` is ``shifted`` on
CPU), each a row in the same alternated rounds; ``--upsample_impls=conv_transpose,gemm`` does the
same for the decoder's up-convolution (``config.model.upsample_impl``; ``auto`` is ``gemm`` on
CPU), for both models; ``--conv_impls=xla,onednn`` likewise for the dense convolutions
(``config.model.conv_impl``; ``auto`` is ``onednn`` on one CPU device when the extension
builds, bts_jax/models/onednn). GFLOP/s use one FLOP count per size and model: XLA's cost
analysis of the float32 step in the model's own formulation (grouped depthwise, transposed
up-convolution), lowered but not compiled, so a faster formulation shows as more GFLOP/s, not as
fewer FLOPs.

XLA flags go in the ``XLA_FLAGS`` environment variable as usual; what was tried, and what each
change was worth, is in docs/performance.md.
"""

import argparse
import os
import statistics
import time
from collections.abc import Sequence

# The library's train step and the PyTorch twin's, each an Impl, beside this script (its folder is
# sys.path[0] when run, and on pytest's path for the tests).
import step_impls

SIZES = {
    "test": dict(features=(4, 8, 16, 32), image_size=32, batch=8),
    "quickstart": dict(features=(16, 32, 64, 128), image_size=96, batch=4),
    "issue": dict(features=(16, 32, 64, 128), image_size=128, batch=8),
    "wide": dict(features=(32, 64, 128, 256), image_size=128, batch=8),
    # The paper protocol's model and input (configs/paper.py): for GPUs.
    "paper": dict(features=(64, 128, 256, 512), image_size=512, batch=8),
}
MODELS = {
    "baseline": dict(gsconv_in="", eca_in=""),
    "paper": dict(gsconv_in="encoder,bottleneck,decoder", eca_in="encoder,bottleneck,decoder"),
}
FRAMEWORKS = ("jax", "torch", "torch_compile")
# Dense peak FLOP/s of GPUs for MFU, per compute dtype (vendor data sheets, SXM parts, no
# sparsity); "tfloat32" is float32 computed on the tensor cores (TF32), the peak a float32 row is
# held to when TF32 is allowed.
PEAK_FLOPS = {
    "H100": {"float32": 67e12, "tfloat32": 494.7e12, "bfloat16": 989e12},
    "H200": {"float32": 67e12, "tfloat32": 494.7e12, "bfloat16": 989e12},
    "A100": {"float32": 19.5e12, "tfloat32": 156e12, "bfloat16": 312e12},
}


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Parses the command line (see the module docstring)."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--sizes", default="test,quickstart,issue", help="presets: " + ",".join(SIZES)
    )
    parser.add_argument("--features", default="", help="custom widths, e.g. 16,32,64,128")
    parser.add_argument("--image_size", type=int, default=0, help="custom height = width")
    parser.add_argument("--batch", type=int, default=0, help="custom batch size")
    parser.add_argument("--models", default="baseline,paper", help=",".join(MODELS))
    parser.add_argument("--dtypes", default="float32,bfloat16", help="JAX compute dtypes")
    parser.add_argument(
        "--depthwise_impls",
        default="auto",
        help="paper model: one JAX row per config.model.depthwise_impl "
        "(auto,grouped,dense,shifted)",
    )
    parser.add_argument(
        "--upsample_impls",
        default="auto",
        help="one JAX row per config.model.upsample_impl (auto,conv_transpose,gemm)",
    )
    parser.add_argument(
        "--conv_impls",
        default="auto",
        help="one JAX row per config.model.conv_impl (auto,xla,onednn)",
    )
    parser.add_argument("--frameworks", default=",".join(FRAMEWORKS), help=",".join(FRAMEWORKS))
    parser.add_argument(
        "--tf32",
        choices=("on", "off", "default"),
        default="default",
        help="float32 convolutions on TF32 tensor cores, set alike in both frameworks: 'on' "
        "(JAX precision tensorfloat32; torch cudnn and matmul allow_tf32) or 'off' (float32); "
        "'default' leaves each framework's own default (JAX: TF32 on GPUs; PyTorch: TF32 "
        "convolutions, float32 matmuls)",
    )
    parser.add_argument("--repeats", type=int, default=5, help="timed rounds")
    parser.add_argument("--steps", type=int, default=10, help="train steps per round")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps after compiling")
    parser.add_argument("--tolerance", type=float, default=1e-3, help="max relative logit error")
    args = parser.parse_args(argv)
    args.frameworks = _split(args.frameworks, FRAMEWORKS, "--frameworks")
    args.models = _split(args.models, MODELS, "--models")
    args.dtypes = _split(args.dtypes, ("float32", "bfloat16"), "--dtypes")
    from bts_jax.models.layers import DEPTHWISE_IMPLS, UPSAMPLE_IMPLS

    args.depthwise_impls = _split(args.depthwise_impls, DEPTHWISE_IMPLS, "--depthwise_impls")
    args.upsample_impls = _split(args.upsample_impls, UPSAMPLE_IMPLS, "--upsample_impls")
    args.conv_impls = _split(args.conv_impls, ("auto", "xla", "onednn"), "--conv_impls")
    if args.features or args.image_size or args.batch:
        if not (args.features and args.image_size and args.batch):
            parser.error("--features, --image_size and --batch go together")
        features = tuple(int(f) for f in args.features.split(","))
        args.sizes = [
            ("custom", dict(features=features, image_size=args.image_size, batch=args.batch))
        ]
    else:
        args.sizes = [(name, SIZES[name]) for name in _split(args.sizes, SIZES, "--sizes")]
    if args.repeats < 1 or args.steps < 1 or args.warmup < 0:
        parser.error("--repeats and --steps must be >= 1, --warmup >= 0")
    return args


def _split(value: str, allowed, setting: str) -> list[str]:
    names = [name.strip() for name in value.split(",") if name.strip()]
    unknown = [name for name in names if name not in allowed]
    if unknown or not names:
        raise SystemExit(f"{setting}={value!r}: expected names from {', '.join(allowed)}")
    return names


def make_config(
    size: dict,
    model: dict,
    dtype: str,
    depthwise_impl: str = "auto",
    upsample_impl: str = "auto",
    conv_impl: str = "auto",
):
    """The experiment config of one benchmark case (constant-rate Adam, loss weights 1, 1)."""
    from bts_jax.configs import default

    config = default.get_config()
    if conv_impl != "auto" or "conv_impl" in config.model:  # older versions lack the field
        config.model.conv_impl = conv_impl
    config.model.depthwise_impl = depthwise_impl
    config.model.upsample_impl = upsample_impl
    config.model.features = tuple(size["features"])
    config.model.gsconv_in = model["gsconv_in"]
    config.model.eca_in = model["eca_in"]
    config.data.image_size = size["image_size"]
    config.batch_size = config.eval_batch_size = size["batch"]
    config.dtype = dtype
    config.optimizer.learning_rate = 1e-4
    config.optimizer.schedule = "constant"
    return config


def make_batch(size: dict, seed: int = 0) -> dict:
    """A fixed random batch: ``image`` (B, S, S, 1) float32, ``mask`` (B, S, S) int32, ``valid``."""
    import numpy as np

    rng = np.random.default_rng(seed)
    b, s = size["batch"], size["image_size"]
    return {
        "image": rng.standard_normal((b, s, s, 1)).astype(np.float32),
        "mask": (rng.random((b, s, s)) < 0.3).astype(np.int32),
        "valid": np.ones((b,), bool),
    }


def reference_flops(size: dict, model_name: str, batch: dict, mesh) -> float:
    """FLOPs of one float32 train step in the model's own formulation, the same for every row.

    XLA's cost analysis of the step lowered (not compiled) with grouped depthwise convolutions and
    transposed up-convolutions: a reformulation that multiplies zeros (block-diagonal depthwise)
    or skips them (the GEMM up-convolution) does not change it.
    """
    import jax
    import optax

    from bts_jax.models import build_model

    # XLA's convolutions: the cost analysis counts no FLOPs inside a custom call (oneDNN).
    config = make_config(size, MODELS[model_name], "float32", "grouped", "conv_transpose", "xla")
    model = build_model(config.model)
    optimizer = step_impls.library_function("create_optimizer")(
        config.optimizer, optax.constant_schedule(1e-4)
    )
    state = jax.eval_shape(
        lambda: step_impls.library_function("create_train_state")(config, model, optimizer, mesh)
    )
    step = step_impls.library_function("make_train_step")(config, model, optimizer, mesh)
    cost = step.lower(
        state, step_impls.library_function("make_global_batch")(batch, mesh)
    ).cost_analysis()
    cost = cost[0] if isinstance(cost, list) else cost
    return float(cost["flops"])


def time_impls(impls: list[step_impls.Impl], batch_size: int, args) -> None:
    """Warms each up, then times ``args.repeats`` rounds, alternating implementations per round."""
    for impl in impls:
        impl.run(max(args.warmup, 1))
    cuda = step_impls.cuda_available()
    for _ in range(args.repeats):
        for impl in impls:
            if cuda and impl.name.startswith("torch"):
                import torch

                torch.cuda.reset_peak_memory_stats()
            start = time.perf_counter()
            impl.run(args.steps)
            impl.images_per_s.append(args.steps * batch_size / (time.perf_counter() - start))


def device_description() -> tuple[str, str]:
    """(JAX's device in words, its short kind) e.g. ("cpu: AMD EPYC, 2 cores", "cpu")."""
    import jax

    device = jax.devices()[0]
    if device.platform == "cpu":
        name = "cpu"
        try:
            with open("/proc/cpuinfo") as f:
                name = next(
                    line.split(":", 1)[1].strip() for line in f if line.startswith("model name")
                )
        except (OSError, StopIteration):
            pass
        return f"CPU {name}, {os.cpu_count()} logical cores", "cpu"
    return f"{device.platform}: {device.device_kind}", device.device_kind


def _peak_flops(kind: str, dtype: str, tf32: str = "default") -> float | None:
    if dtype == "float32" and tf32 != "off":
        dtype = "tfloat32"
    for name, peaks in PEAK_FLOPS.items():
        if name in kind:
            return peaks.get(dtype)
    return None


def format_rows(rows: list[dict], gpu: bool) -> str:
    """Formats result rows as a Markdown table."""
    head = [
        "size",
        "model",
        "implementation",
        "images/s median [min-max]",
        "x torch eager",
        "GFLOP/s",
    ]
    if gpu:
        head += ["MFU", "peak MiB"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for row in rows:
        cells = [
            row["size"],
            row["model"],
            row["impl"],
            f"{row['median']:.1f} [{row['min']:.1f}-{row['max']:.1f}]",
            f"{row['ratio']:.2f}" if row["ratio"] else "-",
            f"{row['gflops']:.1f}",
        ]
        if gpu:
            cells += [
                f"{100 * row['mfu']:.1f}%" if row["mfu"] else "-",
                f"{row['memory'] / 2**20:.0f}" if row["memory"] else "-",
            ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def run_case(size_name: str, size: dict, model_name: str, args, mesh, kind: str) -> list[dict]:
    """Checks and times every requested implementation of one size and model; returns rows."""
    import jax

    batch = make_batch(size)
    impls, reference = [], None
    flops = reference_flops(size, model_name, batch, mesh)
    # The baseline has no depthwise convolution: one row per dtype and up-convolution is enough.
    depthwise_impls = args.depthwise_impls if MODELS[model_name]["gsconv_in"] else ["auto"]
    variants = [
        (d, u, c) for d in depthwise_impls for u in args.upsample_impls for c in args.conv_impls
    ]
    timed = "jax" in args.frameworks
    for dtype in args.dtypes if timed else ["float32"]:
        for variant in variants if timed else variants[:1]:
            config = make_config(size, MODELS[model_name], dtype, *variant)
            impl, initial, model, _ = step_impls.jax_impl(config, batch, mesh)
            if dtype == "float32" and reference is None:
                reference = (initial, model)
            if timed:
                impls.append(impl)
    if reference is None:  # bfloat16 only: the float32 model is the reference.
        config = make_config(size, MODELS[model_name], "float32", *variants[0])
        _, initial, model, _ = step_impls.jax_impl(config, batch, mesh)
        reference = (initial, model)
    wants_torch = [f for f in args.frameworks if f.startswith("torch")]
    if wants_torch:
        twin = step_impls.torch_twin(make_config(size, MODELS[model_name], "float32"), reference[0])
        step_impls.check_agreement(reference[1], reference[0], twin, batch, args.tolerance)
        # One PyTorch row per framework and dtype: bfloat16 is eager PyTorch under autocast
        # (torch.compile stays float32: a second compile would not fit gpu_check.sh's limits).
        for framework in wants_torch:
            compile_model = framework == "torch_compile"
            for dtype in ["float32"] if compile_model else args.dtypes:
                try:
                    impl = step_impls.torch_impl(twin, batch, compile_model, dtype)
                    impl.run(1)  # compiles; a failure here drops the row, not the run
                except Exception as error:
                    print(
                        f"  {framework} {dtype}: skipped ({type(error).__name__}: {error!s:.200})"
                    )
                    continue
                impls.append(impl)
    del jax
    time_impls(impls, size["batch"], args)

    rows = []
    # Each row against PyTorch eager in its own dtype (bfloat16 against autocast), else float32.
    eager = {i.dtype: i for i in impls if i.name.startswith("torch eager")}
    label = f"{size_name} {size['image_size']}px b{size['batch']} w{size['features'][0]}"
    for impl in impls:
        median = statistics.median(impl.images_per_s)
        reference = eager.get(impl.dtype, eager.get("float32"))
        eager_median = statistics.median(reference.images_per_s) if reference else None
        peak = _peak_flops(kind, impl.dtype, args.tf32)
        gflops = flops * median / size["batch"] / 1e9
        rows.append(
            dict(
                size=label,
                model=model_name,
                impl=impl.name,
                median=median,
                min=min(impl.images_per_s),
                max=max(impl.images_per_s),
                ratio=median / eager_median if eager_median else None,
                gflops=gflops,
                mfu=gflops * 1e9 / peak if peak else None,
                memory=impl.memory(),
            )
        )
    return rows


def main(argv: Sequence[str] | None = None) -> list[dict]:
    """Runs the benchmark; returns the table's rows (dicts) after printing them."""
    args = parse_args(argv)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import jax

    if any(f.startswith("torch") for f in args.frameworks):
        import torch

        torch_info = f"torch {torch.__version__}, {torch.get_num_threads()} threads"
    else:
        torch_info = "torch not used"
    description, kind = device_description()
    mesh = step_impls.library_function("make_mesh")(jax.devices()[:1])
    print(f"device: {description}; jax {jax.__version__}; {torch_info}")
    print(f"XLA_FLAGS={os.environ.get('XLA_FLAGS', '')!r}; {step_impls.set_tf32(args.tf32)}")
    print(f"timing: {args.repeats} rounds x {args.steps} steps after {args.warmup} warm-up steps")
    rows = []
    for size_name, size in args.sizes:
        for model_name in args.models:
            print(f"{size_name} {size} {model_name}")
            rows += run_case(size_name, size, model_name, args, mesh, kind)
    print(format_rows(rows, gpu=kind != "cpu"))
    return rows


if __name__ == "__main__":
    main()
