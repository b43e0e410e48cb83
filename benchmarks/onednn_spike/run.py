r"""Issue 29's spike: oneDNN's convolution primitives against XLA:CPU on the train step's shapes.

    python benchmarks/onednn_spike/run.py check                 # oneDNN == XLA on every shape
    python benchmarks/onednn_spike/run.py time --out spike.json # times both sides, prints tables
    python benchmarks/onednn_spike/run.py table spike.json      # prints the tables again

Why: the profile (``benchmarks/profile_step.py``) puts the 3x3 convolutions' kernel gradients at a
third of the baseline step, at 14-50 GFLOP/s. Issue 29 proposes calling oneDNN through
``jax.ffi``; before building that, this spike measures whether oneDNN's forward, backward-data
and backward-weights primitives, alone, are at least 1.5x faster than XLA on the convolutions the
step runs (``shapes.py`` reads them from the traced model: the quickstart (widths 16-128, 96 px,
batch 4) and ``benchmarks/vs_pytorch.py``'s wide size (32-256, 128 px, batch 8), paper model and
baseline U-Net), in float32 and bfloat16.

How: ``conv_spike.cpp`` (built by ``build.sh`` against the pip packages ``onednn`` and
``onednn-devel``, found under ``$ONEDNN_PREFIX``, default /work/venvs/onednn) runs each primitive
on NHWC/HWIO user memory in three variants (see its header: ``user``, ``wany``, ``any``); the
XLA side (``xla_side.py``) runs the same inputs through jitted ``lax.conv_general_dilated`` and
``jax.vjp``. ``check`` compares every result (float32: relative L2 error below 1e-5; bfloat16:
both sides' error against XLA's float32 result on the same inputs, oneDNN's below 1e-2).
``time`` takes the median of several runs per direction and prints GFLOP/s per shape, and per
model and size the step's convolution time on each side (each shape times the number of layers
running it; no input gradient for the first layer, whose input is the image).

``--pause_pids`` stops the given processes (SIGSTOP) during each dtype's timed phase only, and
resumes them (SIGCONT) after, appending each window's UTC start and end to ``--window_log``:
for a shared machine whose other jobs may be paused briefly, not killed.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import os
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import shapes  # noqa: E402
import xla_side  # noqa: E402

from bts_jax import jsonio  # noqa: E402

BINARY = HERE / "build" / "conv_spike"
PREFIX = Path(os.environ.get("ONEDNN_PREFIX", "/work/venvs/onednn"))
F32_TOL, BF16_TOL = 1e-5, 1e-2


def ensure_built() -> Path:
    """Builds conv_spike if it is missing or older than its source."""
    source = HERE / "conv_spike.cpp"
    if not BINARY.exists() or BINARY.stat().st_mtime < source.stat().st_mtime:
        subprocess.run(["bash", str(HERE / "build.sh"), str(BINARY)], check=True)
    return BINARY


def onednn_env() -> dict:
    """The pip build's CPU engine is a SYCL device: point the OpenCL loader at its CPU runtime."""
    env = dict(os.environ)
    env.setdefault("OCL_ICD_FILENAMES", str(PREFIX / "lib" / "libintelocl.so"))
    return env


def shape_arg(conv) -> str:
    return ",".join(
        str(v)
        for v in (
            conv.n,
            conv.h,
            conv.w,
            conv.c,
            conv.o,
            conv.k,
            conv.stride,
            conv.pad,
            conv.groups,
        )
    )


def cases(size_names) -> dict:
    """(size, model) -> Counter of the convolutions of its forward pass (depthwise included)."""
    return {
        (s, m): shapes.model_convs(s, m, grouped=True) for s in size_names for m in shapes.MODELS
    }


def distinct(all_cases: dict) -> list:
    """The distinct convolutions of all cases, largest first."""
    seen = {conv for convs in all_cases.values() for conv in convs}
    return sorted(seen, key=lambda c: -c.flops)


def rel_error(a: np.ndarray, ref: np.ndarray) -> float:
    return float(np.linalg.norm((a - ref).ravel()) / max(np.linalg.norm(ref.ravel()), 1e-30))


def check(convs, dtypes) -> bool:
    """Compares oneDNN's three variants to XLA on every shape, direction and dtype."""
    binary, ok, worst = ensure_built(), True, {}
    print("Relative L2 error against XLA in float32 on the same inputs (float32: XLA itself).")
    print("| shape | dtype | direction | XLA rel. error | oneDNN user / wany / any rel. error |")
    print("|---|---|---|---|---|")
    for conv in convs:
        for dtype in dtypes:
            # The reference: XLA in float32 on this dtype's inputs (bfloat16's are exact in it).
            reference = xla_side.results(conv, dtype, in_f32=True)
            xla = xla_side.results(conv, dtype)
            with tempfile.TemporaryDirectory() as out:
                subprocess.run(
                    [str(binary), "check", dtype, shape_arg(conv), out],
                    check=True,
                    env=onednn_env(),
                    stdout=subprocess.DEVNULL,
                )
                for direction in xla_side.DIRECTIONS:
                    ref = reference[direction]
                    errors = [
                        rel_error(_read(Path(out) / f"{direction}_{v}.bin", dtype, ref), ref)
                        for v in ("user", "wany", "any")
                    ]
                    xla_error = rel_error(xla[direction], ref)
                    key = (dtype, direction)
                    worst[key] = max(worst.get(key, (0.0, 0.0)), (max(errors), xla_error))
                    good = max(errors) < (F32_TOL if dtype == "f32" else BF16_TOL)
                    ok &= good
                    print(
                        f"| {conv.label()} | {dtype} | {direction} | {xla_error:.1e} | "
                        + " / ".join(f"{e:.1e}" for e in errors)
                        + ("" if good else " **FAIL**")
                        + " |",
                        flush=True,
                    )
    for (dtype, direction), (mine, theirs) in worst.items():
        limit = F32_TOL if dtype == "f32" else BF16_TOL
        print(f"worst {dtype} {direction}: oneDNN {mine:.1e} (limit {limit:.0e}), XLA {theirs:.1e}")
    print("check: " + ("all within the limits" if ok else "FAILED"))
    return ok


def _read(path: Path, dtype: str, like: np.ndarray) -> np.ndarray:
    raw = np.fromfile(path, np.float32 if dtype == "f32" else np.uint16)
    if dtype == "bf16":  # bfloat16 is the top half of a float32
        raw = (raw.astype(np.uint32) << np.uint32(16)).view(np.float32)
    return raw.reshape(like.shape)


class Paused:
    """SIGSTOPs ``pids`` on entry, SIGCONTs them on exit, and logs the window's UTC times."""

    def __init__(self, pids: list[int], log: str, tag: str):
        self.pids, self.log, self.tag = pids, log, tag

    def __enter__(self):
        self.start = utc()
        for pid in self.pids:
            os.kill(pid, signal.SIGSTOP)
        return self

    def __exit__(self, *exc):
        for pid in self.pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGCONT)
        if self.pids and self.log:
            with open(self.log, "a") as f:
                f.write(f"{self.start} {utc()} {self.tag}\n")
        return False


def utc() -> str:
    """Now, UTC, to the second (a paused window's ends)."""
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def time_all(convs, dtypes, reps: int, pids: list[int], log: str) -> list[dict]:
    """One row per shape, dtype and direction: XLA's and oneDNN's medians in milliseconds."""
    binary, rows = ensure_built(), []
    for dtype in dtypes:
        compiled = [xla_side.compile_all(conv, dtype) for conv in convs]  # before the window
        with Paused(pids, log, "spike29"):
            xla = [xla_side.timings(c, reps) for c in compiled]
            out = subprocess.run(
                [str(binary), "time", dtype, str(reps)] + [shape_arg(c) for c in convs],
                check=True,
                env=onednn_env(),
                capture_output=True,
                text=True,
            ).stdout
        onednn = {(r["shape"], r["dir"]): r for r in map(json.loads, out.splitlines())}
        for conv, xla_ms in zip(convs, xla, strict=True):
            for direction in xla_side.DIRECTIONS:
                row = dict(
                    onednn[(shape_arg(conv), direction)],
                    dtype=dtype,
                    xla_ms=xla_ms[direction],
                    gflop=conv.flops / 1e9,
                    label=conv.label(),
                )
                rows.append(row)
        del compiled
    return rows


def best(row: dict, alone: bool) -> float:
    """The best oneDNN time: with the reorders a NHWC caller pays, or the primitive alone."""
    return min(row["user_ms"], row["wany_ms"], row["any_ms" if alone else "any_reorder_ms"])


def gflops(gflop: float, ms: float) -> str:
    return f"{gflop / ms * 1e3:.0f}"


def shape_table(rows: list[dict]) -> str:
    lines = [
        "| shape | dtype | direction | XLA GFLOP/s | oneDNN user | wany (+kernel reorder) | "
        "any alone | any + reorders | best with reorders / XLA | best alone / XLA | "
        "implementation (best with reorders) |",
        "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for r in rows:
        g = r["gflop"]
        variant = min(("user", "wany", "any_reorder"), key=lambda v: r[f"{v}_ms"])
        impl = r["impl_" + variant.replace("_reorder", "")]
        lines.append(
            f"| {r['label']} | {r['dtype']} | {r['dir']} | {gflops(g, r['xla_ms'])} | "
            f"{gflops(g, r['user_ms'])} | {gflops(g, r['wany_ms'])} | {gflops(g, r['any_ms'])} | "
            f"{gflops(g, r['any_reorder_ms'])} | {r['xla_ms'] / best(r, False):.2f} | "
            f"{r['xla_ms'] / best(r, True):.2f} | {variant}: {impl} |"
        )
    return "\n".join(lines)


def totals_table(rows: list[dict], all_cases: dict) -> str:
    """Per size, model and dtype: the step's convolution time on each side (FLOP-weighted)."""
    by_key = {(r["label"], r["dtype"], r["dir"]): r for r in rows}
    lines = [
        "| size | model | dtype | convs | GFLOP/step | XLA ms | oneDNN ms (with reorders) | "
        "speedup | oneDNN ms (alone) | speedup | >= 1.5x? |",
        "|---|---|---|---|---:|---:|---:|---:|---:|---:|---|",
    ]
    dtypes = sorted({r["dtype"] for r in rows}, key=list(xla_side.DTYPES).index)
    for (size, model), convs in all_cases.items():
        for dtype in dtypes:
            for subset, keep in (("all", lambda c: True), ("dense", lambda c: c.groups == 1)):
                if subset == "dense" and all(c.groups == 1 for c in convs):
                    continue
                flop = xla = with_ = alone = 0.0
                for conv, count in convs.items():
                    if not keep(conv):
                        continue
                    for direction in xla_side.DIRECTIONS:
                        if direction == "bwd_data" and conv.c == 1:
                            continue  # the image needs no gradient
                        r = by_key[(conv.label(), dtype, direction)]
                        flop += count * r["gflop"]
                        xla += count * r["xla_ms"]
                        with_ += count * best(r, False)
                        alone += count * best(r, True)
                lines.append(
                    f"| {size} | {model} | {dtype} | {subset} | {flop:.1f} | {xla:.0f} | "
                    f"{with_:.0f} | {xla / with_:.2f} | {alone:.0f} | {xla / alone:.2f} | "
                    f"{'yes' if xla / with_ >= 1.5 else 'no'} |"
                )
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("mode", choices=("check", "time", "table"))
    parser.add_argument("json", nargs="?", help="table: the results written by time --out")
    parser.add_argument("--sizes", default="quickstart,wide")
    parser.add_argument("--dtypes", default="f32,bf16")
    parser.add_argument("--reps", type=int, default=5, help="timed runs per direction (max)")
    parser.add_argument("--out", default="", help="time: write the rows here (JSON)")
    parser.add_argument("--pause_pids", default="", help="time: pids to pause while timing")
    parser.add_argument("--window_log", default="", help="time: append paused windows here")
    args = parser.parse_args(argv)
    sizes, dtypes = args.sizes.split(","), args.dtypes.split(",")
    all_cases = cases(sizes)
    convs = distinct(all_cases)
    if args.mode == "check":
        return 0 if check(convs, dtypes) else 1
    if args.mode == "time":
        pids = [int(p) for p in args.pause_pids.split(",") if p]
        rows = time_all(convs, dtypes, args.reps, pids, args.window_log)
        if args.out:
            jsonio.write_json(args.out, rows, indent=1)
    else:
        rows = jsonio.read_json(args.json)
    print(shape_table(rows))
    print()
    print(totals_table(rows, all_cases))
    return 0


if __name__ == "__main__":
    sys.exit(main())
