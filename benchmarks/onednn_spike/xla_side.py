"""The XLA side of the spike: the same convolutions, inputs and directions, run by jitted JAX.

Each `shapes.Conv` runs as the model runs it on CPU: ``lax.conv_general_dilated`` in NHWC/HWIO
with explicit symmetric padding for a dense convolution, and the library's own
``shifted_depthwise_conv`` (what ``depthwise_impl="auto"`` picks on CPU) for a depthwise one.
The three directions are three jitted functions: the forward, and the input and kernel gradients
as ``jax.vjp`` of the forward with respect to one argument each, so XLA drops what that gradient
does not need, as it does in the train step.

The inputs are `input_values`, the counter hash that ``conv_spike.cpp`` uses, so both sides
convolve the same numbers.
"""

from __future__ import annotations

import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from bts_jax.models.formulations import shifted_depthwise_conv

DIRECTIONS = ("fwd", "bwd_data", "bwd_weights")
DTYPES = {"f32": jnp.float32, "bf16": jnp.bfloat16}


def input_values(seed: int, count: int, bf16: bool) -> np.ndarray:
    """The first ``count`` values of input stream ``seed`` (``input_value`` in the C++).

    24 hashed bits as k / 2^23 - 1 for float32, 8 bits as k / 128 - 1 (exact in bfloat16) for
    bfloat16; float32 holds both exactly.
    """
    with np.errstate(over="ignore"):
        i = np.arange(count, dtype=np.uint32)
        h = i * np.uint32(0x9E3779B1) + np.uint32((seed * 0x85EBCA77) & 0xFFFFFFFF)
        h ^= h >> np.uint32(15)
        h *= np.uint32(0x2C1B3C6D)
        h ^= h >> np.uint32(12)
        h *= np.uint32(0x297A2D39)
        h ^= h >> np.uint32(15)
    if bf16:
        return (h >> np.uint32(24)).astype(np.float32) / np.float32(128.0) - np.float32(1.0)
    return (h >> np.uint32(8)).astype(np.float32) / np.float32(2.0**23) - np.float32(1.0)


def kernel_shape(conv) -> tuple[int, int, int, int]:
    return (conv.k, conv.k, conv.c // conv.groups, conv.o)


def inputs(conv, dtype: str, in_f32: bool = False) -> tuple[jax.Array, jax.Array, jax.Array]:
    """(x, w, dy) of the convolution in NHWC / HWIO / NHWC, from streams 1, 2 and 3.

    ``dtype``'s values, in that dtype or, with ``in_f32``, in float32 (the same numbers).
    """
    oh, ow = conv.out_hw
    shapes = ((conv.n, conv.h, conv.w, conv.c), kernel_shape(conv), (conv.n, oh, ow, conv.o))
    return tuple(
        jnp.asarray(
            input_values(seed, int(np.prod(s)), dtype == "bf16").reshape(s),
            jnp.float32 if in_f32 else DTYPES[dtype],
        )
        for seed, s in zip((1, 2, 3), shapes, strict=True)
    )


def conv_fn(conv):
    """The forward function x, w -> y, as the model's layer calls it."""
    dn = lax.conv_dimension_numbers(
        (conv.n, conv.h, conv.w, conv.c), kernel_shape(conv), ("NHWC", "HWIO", "NHWC")
    )
    impl = shifted_depthwise_conv if conv.groups > 1 else lax.conv_general_dilated

    def forward(x, w):
        return impl(
            x,
            w,
            (conv.stride, conv.stride),
            ((conv.pad, conv.pad), (conv.pad, conv.pad)),
            feature_group_count=conv.groups,
            dimension_numbers=dn,
        )

    return forward


def direction_fns(conv) -> dict:
    """Direction name -> jitted function of (x, w, dy)."""
    forward = conv_fn(conv)

    def fwd(x, w, dy):
        del dy
        return forward(x, w)

    def bwd_data(x, w, dy):
        return jax.vjp(lambda x: forward(x, w), x)[1](dy)[0]

    def bwd_weights(x, w, dy):
        return jax.vjp(lambda w: forward(x, w), w)[1](dy)[0]

    return {
        name: jax.jit(f) for name, f in zip(DIRECTIONS, (fwd, bwd_data, bwd_weights), strict=True)
    }


def results(conv, dtype: str, in_f32: bool = False) -> dict[str, np.ndarray]:
    """Direction -> XLA's result as float32 numpy (y, dx or dw); ``in_f32``: see `inputs`."""
    args = inputs(conv, dtype, in_f32)
    return {
        name: np.asarray(f(*args).astype(jnp.float32)) for name, f in direction_fns(conv).items()
    }


def median_seconds(f, args, reps: int, budget_s: float = 0.3) -> float:
    """Median wall time of ``f(*args)`` after one warmup call; fewer reps (>= 3) past budget."""
    jax.block_until_ready(f(*args))
    start = time.perf_counter()
    jax.block_until_ready(f(*args))
    times = [time.perf_counter() - start]
    reps = max(3, min(reps, int(budget_s / max(times[0], 1e-6))))
    for _ in range(reps - 1):
        start = time.perf_counter()
        jax.block_until_ready(f(*args))
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def compile_all(conv, dtype: str) -> tuple[dict, tuple]:
    """The compiled direction functions and their inputs (compiled now, outside the timing)."""
    args = inputs(conv, dtype)
    fns = {name: f.lower(*args).compile() for name, f in direction_fns(conv).items()}
    return fns, args


def timings(compiled: tuple[dict, tuple], reps: int) -> dict[str, float]:
    """Direction -> median milliseconds."""
    fns, args = compiled
    return {name: 1e3 * median_seconds(f, args, reps) for name, f in fns.items()}
