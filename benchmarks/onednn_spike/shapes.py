"""The convolutions of one train step, read from the model's traced forward pass.

The spike (issue 29, item 1) times oneDNN against XLA on the convolutions the library's train
step really runs. Rather than transcribe the U-Net by hand, `model_convs` builds the model the
benchmarks build (``benchmarks/vs_pytorch.make_config``), traces ``model.apply`` in train mode
with ``jax.make_jaxpr`` and collects every ``conv_general_dilated`` it finds, with its input and
kernel shapes, stride, padding and group count. Each forward convolution implies two backward
ones in the step (the input gradient and the kernel gradient), so three directions per shape.

Which convolutions are there depends on the CPU formulations the library picks: with the
defaults (``depthwise_impl="auto"`` -> ``"shifted"``, ``upsample_impl="auto"`` -> ``"gemm"`` on
CPU) GSConv's 5x5 depthwise convolution is a sum of shifted products and the 2x2 stride-2
up-convolution a matrix product, so neither is a convolution in the step. ``grouped=True``
traces with ``depthwise_impl="grouped"`` to list the depthwise shapes too (timed separately,
against XLA's grouped convolution and against the shifted formulation the step uses).
"""

from __future__ import annotations

import collections
import dataclasses

import jax
import jax.numpy as jnp

SIZES = {
    "quickstart": dict(features=(16, 32, 64, 128), image_size=96, batch=4),
    "wide": dict(features=(32, 64, 128, 256), image_size=128, batch=8),
}
MODELS = {
    "paper": dict(gsconv_in="encoder,bottleneck,decoder", eca_in="encoder,bottleneck,decoder"),
    "baseline": dict(gsconv_in="", eca_in=""),
}


@dataclasses.dataclass(frozen=True)
class Conv:
    """One 2-D convolution, NHWC input (n, h, w, c), HWIO kernel (k, k, c / groups, o)."""

    n: int
    h: int
    w: int
    c: int
    o: int
    k: int
    stride: int
    pad: int
    groups: int = 1

    @property
    def out_hw(self) -> tuple[int, int]:
        """Output height and width."""
        oh = (self.h + 2 * self.pad - self.k) // self.stride + 1
        ow = (self.w + 2 * self.pad - self.k) // self.stride + 1
        return oh, ow

    @property
    def flops(self) -> float:
        """Multiply-adds x 2 of the forward pass (each gradient costs the same)."""
        oh, ow = self.out_hw
        return 2.0 * self.n * oh * ow * self.o * self.k * self.k * (self.c // self.groups)

    def label(self) -> str:
        """A short name: ``NxHxWxC->O kK [sS] [gG]``."""
        g = f" g{self.groups}" if self.groups > 1 else ""
        s = f" s{self.stride}" if self.stride > 1 else ""
        return f"{self.n}x{self.h}x{self.w}x{self.c}->{self.o} k{self.k}{s}{g}"


def _make_config(size: dict, model: dict, depthwise_impl: str):
    from bts_jax.configs import default

    config = default.get_config()
    config.model.features = tuple(size["features"])
    config.model.gsconv_in = model["gsconv_in"]
    config.model.eca_in = model["eca_in"]
    config.model.depthwise_impl = depthwise_impl
    config.data.image_size = size["image_size"]
    return config


def _walk(jaxpr, found: list) -> None:
    for eqn in jaxpr.eqns:
        if eqn.primitive.name == "conv_general_dilated":
            found.append(eqn)
        for value in eqn.params.values():
            for sub in value if isinstance(value, (list, tuple)) else [value]:
                inner = getattr(sub, "jaxpr", None)
                if inner is not None:
                    _walk(getattr(inner, "jaxpr", inner), found)


def model_convs(size_name: str, model_name: str, grouped: bool = False) -> collections.Counter:
    """Counter of `Conv` -> how many times the forward pass runs it (2-D convolutions only)."""
    from bts_jax.models import build_model

    size = SIZES[size_name]
    config = _make_config(size, MODELS[model_name], "grouped" if grouped else "auto")
    model = build_model(config.model)
    s, b = size["image_size"], size["batch"]
    x = jnp.zeros((b, s, s, 1), jnp.float32)
    variables = jax.eval_shape(lambda: model.init(jax.random.key(0), x, train=False))

    def forward(variables, x):
        return model.apply(variables, x, train=True, mutable=["batch_stats"])

    found: list = []
    _walk(jax.make_jaxpr(forward)(variables, x).jaxpr, found)
    convs: collections.Counter = collections.Counter()
    for eqn in found:
        lhs, rhs = (v.aval.shape for v in eqn.invars[:2])
        if len(lhs) != 4:
            continue  # ECA's 1-D convolution across channels: negligible
        dn = eqn.params["dimension_numbers"]
        if tuple(dn.lhs_spec) != (0, 3, 1, 2) or tuple(dn.rhs_spec) != (3, 2, 0, 1):
            raise ValueError(f"not NHWC/HWIO: {dn}")
        (pad_lo, pad_hi), _ = eqn.params["padding"]
        if pad_lo != pad_hi or any(d != 1 for d in eqn.params["lhs_dilation"]):
            raise ValueError(f"unexpected padding/dilation in {eqn}")
        convs[
            Conv(
                n=lhs[0],
                h=lhs[1],
                w=lhs[2],
                c=lhs[3],
                o=rhs[3],
                k=rhs[0],
                stride=eqn.params["window_strides"][0],
                pad=pad_lo,
                groups=eqn.params["feature_group_count"],
            )
        ] += 1
    return convs


def main() -> None:
    for size_name in SIZES:
        for model_name in MODELS:
            convs = model_convs(size_name, model_name, grouped=True)
            total = sum(c.flops * m for c, m in convs.items())
            print(f"{size_name} {model_name}: {len(convs)} shapes, fwd {total / 1e9:.2f} GFLOP")
            for conv, count in sorted(convs.items(), key=lambda kv: -kv[0].flops * kv[1]):
                share = conv.flops * count / total
                print(f"  {conv.label():32s} x{count}  {100 * share:5.1f}%")


if __name__ == "__main__":
    main()
