"""TTA tests: the views of an asymmetric image, their inversion, and one batched forward pass."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from bts_jax import inference
from bts_jax.inference import tta as tta_lib


def _asymmetric(batch: int = 2, size: int = 5, channels: int = 1) -> np.ndarray:
    # All values distinct: every symmetry of the square moves some of them.
    return np.arange(batch * size * size * channels, dtype=np.float32).reshape(
        batch, size, size, channels
    )


@pytest.mark.parametrize("tta,expected", [("none", 1), ("flips", 4), ("dihedral", 8)])
def test_views_are_distinct_symmetries_and_undo_exactly(tta, expected):
    x = _asymmetric()
    views = np.asarray(tta_lib.make_views(x, tta))
    assert views.shape == (expected * 2, 5, 5, 1) and tta_lib.num_views(tta) == expected
    per_view = views.reshape(expected, 2, 5, 5, 1)
    np.testing.assert_array_equal(per_view[0], x)  # view 0 is the identity
    # Independent oracle: the numpy symmetries of the square.
    oracle = [
        x,
        x[:, :, ::-1],
        x[:, ::-1, :],
        x[:, ::-1, ::-1],
        *(np.swapaxes(x, 1, 2)[:, ::r, ::c] for r, c in ((1, 1), (1, -1), (-1, 1), (-1, -1))),
    ][:expected]
    for got, want in zip(per_view, oracle, strict=True):
        np.testing.assert_array_equal(got, want)
    assert len({v.tobytes() for v in per_view}) == expected  # all different
    undone = np.asarray(tta_lib.undo_views(jnp.asarray(views), tta))
    assert undone.shape == (expected, 2, 5, 5, 1)
    for v in undone:
        np.testing.assert_array_equal(v, x)


def test_bad_settings_and_shapes():
    with pytest.raises(ValueError, match="tta='rot'; expected one of"):
        tta_lib.check_tta("rot")
    with pytest.raises(ValueError, match="needs"):
        tta_lib.make_views(jnp.zeros((1, 4, 6, 1)), "dihedral")
    assert tta_lib.make_views(jnp.zeros((1, 4, 6, 1)), "flips").shape == (4, 4, 6, 1)
    with pytest.raises(ValueError, match="views"):
        tta_lib.undo_views(jnp.zeros((6, 4, 4, 1)), "flips")
    with pytest.raises(ValueError, match="tta="):
        inference.PredictionSettings(tta="all")


# Input shapes _Pointwise was traced with (a module field would make it unhashable for jit).
_SEEN = []


class _Pointwise(nn.Module):
    """Equivariant to flips and rotations: a per-pixel affine map. Records its traced shapes."""

    num_classes: int = 1

    @nn.compact
    def __call__(self, x, *, train: bool):
        _SEEN.append(x.shape)
        return nn.Dense(self.num_classes)(x - 0.5)


class _LeftNeighbour(nn.Module):
    """Not equivariant: each pixel's logit is its left neighbour's value (column 0 gets 0)."""

    num_classes: int = 1

    @nn.compact
    def __call__(self, x, *, train: bool):
        return jnp.pad(x, ((0, 0), (0, 0), (1, 0), (0, 0)))[:, :, :-1] * 4.0 - 2.0


def _members(model, x):
    return [(model, model.init(jax.random.key(0), jnp.asarray(x[:1]), train=False))]


@pytest.mark.parametrize("num_classes", [1, 3])
def test_equivariant_model_gives_the_plain_prediction(num_classes):
    model = _Pointwise(num_classes=num_classes)
    x = _asymmetric(batch=3, size=6) / 108.0
    members = _members(model, x)
    _SEEN.clear()
    plain = inference.batch_probabilities(members, x, "none")
    for tta, views in (("flips", 4), ("dihedral", 8)):
        averaged = inference.batch_probabilities(members, x, tta)
        np.testing.assert_allclose(averaged, plain, atol=1e-6)
        # One trace of one forward pass over every view of the batch: views x 3 images.
        assert (views * 3, 6, 6, 1) in _SEEN
    assert plain.shape == (3, 6, 6, num_classes)
    if num_classes > 1:
        np.testing.assert_allclose(plain.sum(-1), 1.0, atol=1e-6)  # softmax


def test_non_equivariant_model_averages_the_undone_views():
    model = _LeftNeighbour()
    x = _asymmetric(batch=2, size=4) / 32.0
    members = _members(model, x)
    sigmoid = lambda z: 1.0 / (1.0 + np.exp(-z))  # noqa: E731

    def oracle_view(v):  # the numpy model on a numpy view
        shifted = np.pad(v, ((0, 0), (0, 0), (1, 0), (0, 0)))[:, :, :-1]
        return sigmoid(shifted * 4.0 - 2.0)

    # Flip columns, predict, flip back: the logit comes from the right neighbour instead.
    flips = [
        oracle_view(x),
        oracle_view(x[:, :, ::-1])[:, :, ::-1],
        oracle_view(x[:, ::-1])[:, ::-1],
        oracle_view(x[:, ::-1, ::-1])[:, ::-1, ::-1],
    ]
    got = inference.batch_probabilities(members, x, "flips")
    np.testing.assert_allclose(got, np.mean(flips, axis=0), atol=1e-6)
    assert not np.allclose(got, inference.batch_probabilities(members, x, "none"), atol=1e-3)
