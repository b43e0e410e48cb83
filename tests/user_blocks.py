"""Blocks of a user's own, named by import path in tests (``tests.user_blocks:ChannelGate``)."""

import flax.linen as nn
import jax
import jax.numpy as jnp


class ChannelGate(nn.Module):
    """A learned gate per channel: ``y = 2 x sigmoid(w)`` (the attention contract)."""

    channels: int
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x):
        logit = self.param("logit", nn.initializers.zeros, (self.channels,))
        return x * (2 * jax.nn.sigmoid(logit)).astype(self.dtype)


class HalvingAttention(nn.Module):
    """Breaks the attention contract: returns half of the channels."""

    channels: int

    @nn.compact
    def __call__(self, x):
        return x[..., : self.channels // 2]


class PlainConv(nn.Module):
    """A convolution of the user's own: 3x3 with bias, BatchNorm in train mode, ReLU."""

    features: int
    strides: int = 1
    param_dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x, *, train):
        x = nn.Conv(self.features, (3, 3), self.strides, param_dtype=self.param_dtype)(x)
        return jax.nn.relu(nn.BatchNorm(use_running_average=not train)(x))


def make_gate(channels, *, name, dtype, param_dtype, options):
    """A factory with the registry's signature, named by path like a class."""
    del options, param_dtype
    return ChannelGate(channels, dtype=dtype, name=name)


class RMSNorm(nn.Module):
    """A user's norm class: ``x / sqrt(mean_c x^2 + epsilon) * scale`` per position (no shift)."""

    epsilon: float = 1e-6
    channels: int = 0
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x):
        scale = self.param("scale", nn.initializers.ones, (self.channels,))
        x32 = x.astype(jnp.float32)
        rms = jnp.sqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + self.epsilon)
        return (x32 / rms * scale).astype(self.dtype)


def scaled_group_norm(groups=2, *, channels, train, name, dtype, param_dtype, gain=1.0):
    """A user's norm factory: GroupNorm with a fixed ``gain`` on its initial scale."""
    del train
    return nn.GroupNorm(
        num_groups=min(groups, channels),
        scale_init=nn.initializers.constant(gain),
        dtype=dtype,
        param_dtype=param_dtype,
        name=name,
    )
