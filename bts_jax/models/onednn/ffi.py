"""oneDNN's 2-D convolution as a JAX function: FFI registration, ``custom_vjp``, and its choice.

``onednn_conv_general_dilated`` takes the arguments of ``lax.conv_general_dilated`` (it is what
``nn.Conv(conv_general_dilated=...)`` calls) and computes the same function through three XLA
FFI custom calls into oneDNN (``onednn_conv.cpp``): the forward convolution, and in its
``custom_vjp`` the input gradient (backward-data) and the kernel gradient (backward-weights).
Calls it cannot serve (other layouts, dilations, dtypes, negative padding) go to
``lax.conv_general_dilated`` unchanged.

``resolve_conv_impl`` turns ``config.model.conv_impl`` into what runs: ``"onednn"`` or
``"xla"``. A custom call is opaque to XLA's SPMD partitioner, which would gather a sharded
batch onto every device to run it, so oneDNN is only chosen with a single device.
"""

from __future__ import annotations

import ctypes
import dataclasses
import functools
import logging
import os
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from bts_jax.models.onednn import build

CONV_IMPLS = ("auto", "xla", "onednn")
TARGETS = ("bts_onednn_conv_fwd", "bts_onednn_conv_bwd_data", "bts_onednn_conv_bwd_weights")
# Let oneDNN choose the kernel's memory layout (reordering the small kernel on every call): on
# plain HWIO memory it falls back to im2col gemm for both gradients (benchmarks/onednn_spike).
# BTS_JAX_ONEDNN_WEIGHTS=user runs on HWIO memory as is, to measure that alternative (read
# when a convolution is traced).
WEIGHTS_LAYOUT_VARIABLE = "BTS_JAX_ONEDNN_WEIGHTS"

_log = logging.getLogger(__name__)
_NHWC = ("NHWC", "HWIO", "NHWC")


@dataclasses.dataclass(frozen=True)
class Availability:
    """Whether the extension is loaded and registered, and if not, why.

    Attributes:
      ok: the three FFI targets are registered for the CPU platform.
      reason: why not ("" when ``ok``).
      library: the shared library loaded ("" when not ``ok``).
    """

    ok: bool
    reason: str = ""
    library: str = ""


_loaded: list[ctypes.CDLL] = []  # Keeps the library loaded for the life of the process.


@functools.cache
def availability() -> Availability:
    """Builds (on first use) and loads the extension, and registers its targets, once a process.

    Returns:
      ``Availability(ok=True, library=...)``, or ``ok=False`` with the reason (no oneDNN, no
      compiler, a build or load error). Never raises.
    """
    return load()


def load() -> Availability:
    """What `availability` caches: builds if needed, loads, registers the FFI targets."""
    try:
        library, lib_dir = build.build_library()
        # The SYCL build of oneDNN runs its CPU engine on Intel's OpenCL CPU driver.
        driver = lib_dir / "libintelocl.so"
        if driver.exists():
            os.environ.setdefault("OCL_ICD_FILENAMES", str(driver))
        handle = ctypes.cdll.LoadLibrary(str(library))
        for name in TARGETS:
            capsule = jax.ffi.pycapsule(getattr(handle, name))
            jax.ffi.register_ffi_target(name, capsule, platform="cpu")
    except (build.BuildError, OSError, AttributeError, RuntimeError) as error:
        return Availability(False, reason=f"{type(error).__name__}: {error}")
    _loaded.append(handle)
    return Availability(True, library=str(library))


def cache_size() -> int:
    """Primitives built so far by the extension (one per direction, shape, dtype and attributes)."""
    if not availability().ok:
        return 0
    fn = _loaded[-1].bts_onednn_cache_size
    fn.restype = ctypes.c_int64
    return int(fn())


def device_count(backend: str) -> int:
    """The devices a program may be partitioned over: every device of ``backend``."""
    return jax.device_count(backend)


_warned: set[str] = set()


def resolve_conv_impl(impl: str, backend: str | None = None) -> str:
    """Returns ``"onednn"`` or ``"xla"``: what ``config.model.conv_impl = impl`` runs.

    ``"auto"`` is ``"onednn"`` on a CPU backend with exactly one device when the extension
    builds and loads, else ``"xla"``; falling back for want of the extension logs one line with
    the reason (once per process).

    Args:
      impl: one of ``CONV_IMPLS``.
      backend: the platform the model is traced for; defaults to ``jax.default_backend()``.

    Raises:
      ValueError: ``impl`` is not one of ``CONV_IMPLS``.
      RuntimeError: ``impl`` is ``"onednn"`` and oneDNN cannot run here (not a CPU backend,
        several devices, or the extension does not build or load); the message says why.
    """
    if impl not in CONV_IMPLS:
        raise ValueError(f"config.model.conv_impl={impl!r} must be one of {list(CONV_IMPLS)}.")
    if impl == "xla":
        return "xla"
    backend = backend or jax.default_backend()
    why = ""
    if backend != "cpu":
        why = f"the backend is {backend!r}, not 'cpu'"
    elif (devices := device_count(backend)) != 1:
        why = f"there are {devices} devices: the custom call is not partitioned over a mesh"
    if why:
        if impl == "auto":
            return "xla"
        raise RuntimeError(f"config.model.conv_impl='onednn' cannot run here: {why}.")
    status = availability()
    if status.ok:
        return "onednn"
    if impl == "onednn":
        raise RuntimeError(
            f"config.model.conv_impl='onednn': the oneDNN extension is unavailable: {status.reason}"
        )
    if status.reason not in _warned:
        _warned.add(status.reason)
        _log.warning(
            "config.model.conv_impl='auto' uses XLA's convolutions: %s", status.reason.strip()
        )
    return "xla"


def _attrs(strides: tuple, pads: tuple, groups: int) -> dict[str, Any]:
    (sh, sw), ((pt, pb), (pl, pr)) = strides, pads
    values = dict(stride_h=sh, stride_w=sw, pad_top=pt, pad_bottom=pb, pad_left=pl, pad_right=pr)
    weights_any = os.environ.get(WEIGHTS_LAYOUT_VARIABLE, "any") != "user"
    values.update(groups=groups, weights_any=int(weights_any))
    return {k: np.int64(v) for k, v in values.items()}


def _call(target: str, shape: tuple, dtype: Any, a, b, strides, pads, groups) -> jax.Array:
    status = availability()  # Registers the targets when called without resolve_conv_impl.
    if not status.ok:
        raise RuntimeError(f"The oneDNN extension is unavailable: {status.reason}")
    out = jax.ShapeDtypeStruct(shape, dtype)
    # vmap runs one call per batch element ("sequential"): the model is never vmapped.
    return jax.ffi.ffi_call(target, out, vmap_method="sequential")(
        a, b, **_attrs(strides, pads, groups)
    )


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3, 4))
def _conv(x: jax.Array, w: jax.Array, strides: tuple, pads: tuple, groups: int) -> jax.Array:
    """The convolution (N, OH, OW, O) of x (N, H, W, C) by w (KH, KW, C / groups, O), by oneDNN."""
    (kh, kw), (sh, sw) = w.shape[:2], strides
    (pt, pb), (pl, pr) = pads
    oh = (x.shape[1] + pt + pb - kh) // sh + 1
    ow = (x.shape[2] + pl + pr - kw) // sw + 1
    shape = (x.shape[0], oh, ow, w.shape[3])
    return _call(TARGETS[0], shape, x.dtype, x, w, strides, pads, groups)


def _conv_fwd(x, w, strides, pads, groups):
    return _conv(x, w, strides, pads, groups), (x, w)


def _conv_bwd(strides, pads, groups, residuals, dy):
    x, w = residuals
    dy = dy.astype(x.dtype)
    dx = _call(TARGETS[1], x.shape, x.dtype, dy, w, strides, pads, groups)
    if x.dtype == jnp.bfloat16:
        # oneDNN 3.2's bfloat16 kernel gradient on NHWC activations (jit_bf16) took 270 of the
        # quickstart bfloat16 step's 340 ms of convolutions; in float32 (brgconv) it is 8x
        # faster, casts included, and accumulates the same way.
        x32, dy32 = x.astype(jnp.float32), dy.astype(jnp.float32)
        dw = _call(TARGETS[2], w.shape, jnp.float32, x32, dy32, strides, pads, groups)
        return dx, dw.astype(w.dtype)
    dw = _call(TARGETS[2], w.shape, w.dtype, x, dy, strides, pads, groups)
    return dx, dw


_conv.defvjp(_conv_fwd, _conv_bwd)


def _effective_pads(x_shape, w_shape, strides, padding) -> tuple[tuple, tuple] | None:
    """(pads, crop): ((top, bottom), (left, right)) as oneDNN takes them, (rows, cols) to keep.

    oneDNN wants the bottom/right padding that the output size implies, (OH - 1) * s + K - H -
    top, which is smaller than the one asked when the stride does not divide the padded size,
    and negative when the last input rows are never read: those are cropped off instead (their
    gradient is zero). None when oneDNN cannot serve the padding (negative top/left).
    """
    if isinstance(padding, str):
        padding = lax.padtype_to_pads(x_shape[1:3], w_shape[:2], strides, padding)
    pads, crop = [], []
    for size, k, s, (lo, hi) in zip(x_shape[1:3], w_shape[:2], strides, padding, strict=True):
        out = (size + lo + hi - k) // s + 1
        hi = (out - 1) * s + k - size - lo
        if lo < 0 or out < 1:
            return None
        pads.append((int(lo), max(int(hi), 0)))
        crop.append(size + min(int(hi), 0))
    return tuple(pads), tuple(crop)


def onednn_conv_general_dilated(
    lhs: jax.Array,
    rhs: jax.Array,
    window_strides: Sequence[int],
    padding: Any,
    lhs_dilation: Sequence[int] | None = None,
    rhs_dilation: Sequence[int] | None = None,
    dimension_numbers: Any = None,
    feature_group_count: int = 1,
    batch_group_count: int = 1,
    precision: Any = None,
    preferred_element_type: Any = None,
) -> jax.Array:
    """``lax.conv_general_dilated`` through oneDNN for NHWC/HWIO 2-D convolutions.

    Served by oneDNN: lhs (N, H, W, C) and rhs (KH, KW, C / G, O) of one dtype, float32 or
    bfloat16, dimension numbers ("NHWC", "HWIO", "NHWC"), any strides, "SAME"/"VALID"/explicit
    non-negative padding, ``feature_group_count`` G, no dilation. Anything else, and
    ``preferred_element_type``, goes to ``lax.conv_general_dilated``. ``precision`` is ignored:
    oneDNN computes float32 in float32 and bfloat16 with float32 accumulation. Differentiable
    (``jax.grad``) through a ``custom_vjp`` whose gradients are oneDNN calls too.

    Args:
      lhs: input, (N, H, W, C).
      rhs: kernel, (KH, KW, C / feature_group_count, O).
      window_strides: (sh, sw).
      padding: "SAME", "VALID" or ((top, bottom), (left, right)).
      lhs_dilation: None or ones.
      rhs_dilation: None or ones.
      dimension_numbers: NHWC/HWIO/NHWC (strings or ``ConvDimensionNumbers``).
      feature_group_count: G, dividing C and O.
      batch_group_count: 1.
      precision: ignored (see above).
      preferred_element_type: None.

    Returns:
      The convolution, (N, OH, OW, O), in lhs's dtype.
    """
    strides = tuple(int(s) for s in window_strides)
    found = None
    nhwc = lhs.ndim == 4 and lax.conv_dimension_numbers(
        lhs.shape, rhs.shape, dimension_numbers
    ) == lax.conv_dimension_numbers(lhs.shape, rhs.shape, _NHWC)
    if (
        nhwc
        and lhs.dtype == rhs.dtype
        and lhs.dtype in (jnp.float32, jnp.bfloat16)
        and all(d is None or tuple(d) == (1, 1) for d in (lhs_dilation, rhs_dilation))
        and batch_group_count == 1
        and preferred_element_type is None
    ):
        found = _effective_pads(lhs.shape, rhs.shape, strides, padding)
    if found is None:
        return lax.conv_general_dilated(
            lhs,
            rhs,
            window_strides,
            padding,
            lhs_dilation=lhs_dilation,
            rhs_dilation=rhs_dilation,
            dimension_numbers=dimension_numbers,
            feature_group_count=feature_group_count,
            batch_group_count=batch_group_count,
            precision=precision,
            preferred_element_type=preferred_element_type,
        )
    pads, (rows, cols) = found
    if (rows, cols) != lhs.shape[1:3]:
        lhs = lhs[:, :rows, :cols]
    return _conv(lhs, rhs, strides, pads, int(feature_group_count))
