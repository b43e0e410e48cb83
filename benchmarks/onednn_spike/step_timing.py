"""The quickstart train step with XLA's and oneDNN's convolutions, timed in one paused window.

    PAUSE=1 python benchmarks/onednn_spike/step_timing.py      # REPEATS=5 STEPS=8 by default

Compiles every variant first (paper and baseline model, float32 and bfloat16, conv_impl xla and
onednn, and for the paper model oneDNN on plain HWIO kernels: BTS_JAX_ONEDNN_WEIGHTS=user), warms
each up, then times them in alternating rounds. With PAUSE=1 the machine's training job
(``sweep.py --config configs/sweeps/recipe_study.py``) is stopped (SIGSTOP) for the timed rounds
only, resumed (SIGCONT) after, and the window is appended to /work/logs/paused_windows.txt.
ONLY=paper:bfloat16,... keeps some cases; NO_USER=1 drops the HWIO variant. The same configs
and step as ``benchmarks/vs_pytorch.py --frameworks=jax --conv_impls=xla,onednn``, which pauses
nothing and compiles between cases.
"""

import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
import jax  # noqa: E402
import step_impls  # noqa: E402
import vs_pytorch  # noqa: E402
from run import Paused, utc  # noqa: E402  (this folder's run.py, on the path as the script's)

LOG = "/work/logs/paused_windows.txt"
JOB = "sweep.py --config configs/sweeps/recipe_study.py"


def job_pids() -> list[int]:
    """The training job's python processes (not a shell whose command line names them)."""
    found = subprocess.run(["pgrep", "-f", JOB], capture_output=True, text=True).stdout.split()
    pids = []
    for pid in found:
        try:
            command = Path(f"/proc/{pid}/cmdline").read_text().split("\0")
        except OSError:
            continue
        if "python" in os.path.basename(command[0]) and int(pid) != os.getpid():
            pids.append(int(pid))
    return pids


def main() -> None:
    repeats, steps = int(os.environ.get("REPEATS", 5)), int(os.environ.get("STEPS", 8))
    size = vs_pytorch.SIZES["quickstart"]
    mesh = step_impls.library_function("make_mesh")(jax.devices()[:1])
    batch = vs_pytorch.make_batch(size)
    variants = [  # (model, dtype, conv_impl, kernel layout)
        (model, dtype, conv, layout)
        for model in ("paper", "baseline")
        for dtype in ("float32", "bfloat16")
        for conv, layout in [("xla", "any"), ("onednn", "any")]
        + ([("onednn", "user")] if model == "paper" and not os.environ.get("NO_USER") else [])
    ]
    only = os.environ.get("ONLY", "")
    variants = [v for v in variants if not only or f"{v[0]}:{v[1]}" in only.split(",")]
    impls = []
    for model, dtype, conv, layout in variants:
        os.environ["BTS_JAX_ONEDNN_WEIGHTS"] = layout  # read when the step is traced
        config = vs_pytorch.make_config(size, vs_pytorch.MODELS[model], dtype, conv_impl=conv)
        impl, *_ = step_impls.jax_impl(config, batch, mesh)
        impl.name = f"{model} {dtype} {conv}" + (" (kernel HWIO)" if layout == "user" else "")
        impl.run(3)  # warm-up
        impls.append(impl)
    targets = job_pids() if os.environ.get("PAUSE") == "1" else []
    with Paused(targets, LOG, os.environ.get("TAG", "step_timing")) as window:
        print(f"pausing {targets} at {window.start}", flush=True)
        for _ in range(repeats):
            for impl in impls:
                began = time.perf_counter()
                impl.run(steps)
                impl.images_per_s.append(steps * size["batch"] / (time.perf_counter() - began))
    print(f"resumed at {utc()}", flush=True)
    print(f"{repeats} rounds x {steps} steps, batch {size['batch']}")
    print("| model | dtype | convolutions | images/s median [min-max] | x XLA |")
    print("|---|---|---|---|---|")
    xla = {}
    for impl in impls:
        median = statistics.median(impl.images_per_s)
        model, dtype, conv = impl.name.split(" ", 2)
        xla.setdefault((model, dtype), median)  # the xla row comes first
        spread = f"{min(impl.images_per_s):.1f}-{max(impl.images_per_s):.1f}"
        ratio = median / xla[(model, dtype)]
        print(f"| {model} | {dtype} | {conv} | {median:.1f} [{spread}] | {ratio:.2f} |")


if __name__ == "__main__":
    main()
