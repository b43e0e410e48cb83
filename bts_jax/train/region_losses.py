"""Region losses: soft Dice per image, Tversky and focal Tversky, from soft overlap counts.

Conventions as in `bts_jax.train.losses` (logits ``(B, H, W, C)``, labels ``(B, H, W)``, ``valid``
``(B,)``; float32 whatever the logits' dtype; 0 when no example is valid). Sums run over the
valid batch (pooled, as the default ``dice``) or per image (then averaged over valid images, as
MONAI's ``batch=False``); classes are averaged, background included for ``C > 1``.
"""

import jax
import jax.numpy as jnp

from bts_jax.train.losses import _check_shapes, _weighted_mean, soft_dice_loss
from bts_jax.train.registry import register_loss


def _probabilities_and_targets(
    logits: jax.Array, labels: jax.Array, valid: jax.Array | None
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Float32 ``(B, H, W, C)`` probabilities and one-hot targets, zero on padded examples.

    ``C == 1``: sigmoid of the tumour logit and ``label == 1``; ``C > 1``: softmax and one-hot.
    Also returns the ``(B,)`` float32 weight of each example (1 valid, 0 padded).
    """
    _check_shapes(logits, labels, valid)
    x = logits.astype(jnp.float32)
    if x.shape[-1] == 1:
        probs = jax.nn.sigmoid(x)
        target = (labels == 1).astype(jnp.float32)[..., None]
    else:
        probs = jax.nn.softmax(x, axis=-1)
        target = jax.nn.one_hot(labels, x.shape[-1], dtype=jnp.float32)
    example = jnp.ones(x.shape[:1], jnp.float32) if valid is None else valid.astype(jnp.float32)
    w = example[:, None, None, None]
    return probs * w, target * w, example


def _overlap_loss(
    logits: jax.Array,
    labels: jax.Array,
    valid: jax.Array | None,
    *,
    alpha: float | None,
    beta: float | None,
    smooth: float,
    per_image: bool,
    gamma: float = 1.0,
) -> jax.Array:
    """``(1 - index) ** gamma``, averaged over classes (and over valid images when per image).

    The index is Tversky's ``(TP + s) / (TP + a FP + b FN + s)``, or with ``alpha = beta = None``
    Dice's ``(2 TP + s) / (sum(p) + sum(g) + s)`` (the two differ in how ``s`` enters). Sums run
    over the valid batch (pooled) or over each image (``per_image``).
    """
    probs, target, example = _probabilities_and_targets(logits, labels, valid)
    axes = (1, 2) if per_image else (0, 1, 2)
    tp = jnp.sum(probs * target, axis=axes)  # (B, C) or (C,)
    if alpha is None:
        denominator = jnp.sum(probs, axis=axes) + jnp.sum(target, axis=axes)
        index = (2.0 * tp + smooth) / (denominator + smooth)
    else:
        fp = jnp.sum(probs * (1.0 - target), axis=axes)
        fn = jnp.sum((1.0 - probs) * target, axis=axes)
        index = (tp + smooth) / (tp + alpha * fp + beta * fn + smooth)
    base = jnp.maximum(1.0 - index, 0.0)
    if gamma != 1.0:
        # x ** gamma with gamma < 1 has an infinite slope at 0 (a perfect or an all-padding
        # batch): the double where gives 0 there with a zero gradient instead of NaN.
        positive = base > 0
        base = jnp.where(positive, jnp.where(positive, base, 1.0) ** gamma, 0.0)
    loss = jnp.mean(base, axis=-1)
    if not per_image:
        return loss
    return _weighted_mean(loss, example)


def dice_loss(
    logits: jax.Array,
    labels: jax.Array,
    valid: jax.Array | None = None,
    *,
    per_image: bool = False,
    smooth: float = 1.0,
) -> jax.Array:
    """Soft Dice loss, pooled over the batch (:func:`soft_dice_loss`) or per image.

    Per image, ``dice_bk = (2 sum(p g) + s) / (sum(p) + sum(g) + s)`` over the pixels of image
    ``b``, and ``loss = 1 - mean`` over valid images and classes: MONAI's
    ``DiceLoss(sigmoid=True, batch=False)``. An empty mask then scores ``s / (sum(p) + s)``, so
    each empty slice pulls its whole prediction towards background.

    Args:
        logits: ``(B, H, W, C)`` float logits (any float dtype).
        labels: ``(B, H, W)`` integer class ids.
        valid: optional ``(B,)`` bool; examples with ``False`` are ignored.
        per_image: average per-image Dice instead of pooling the sums over the batch.
        smooth: the additive smoothing ``s``.

    Returns:
        Float32 scalar in ``[0, 1]``; 0 when no example is valid.
    """
    if not per_image:
        return soft_dice_loss(logits, labels, valid, smooth=smooth)
    return _overlap_loss(
        logits, labels, valid, alpha=None, beta=None, smooth=smooth, per_image=True
    )


def tversky_loss(
    logits: jax.Array,
    labels: jax.Array,
    valid: jax.Array | None = None,
    *,
    alpha: float = 0.5,
    beta: float = 0.5,
    smooth: float = 1.0,
    per_image: bool = False,
) -> jax.Array:
    """Tversky loss (Salehi et al. 2017): ``1 - (TP + s) / (TP + alpha FP + beta FN + s)``.

    ``TP = sum(p g)``, ``FP = sum(p (1 - g))``, ``FN = sum((1 - p) g)`` with soft ``p``, pooled
    over the batch or per image as in :func:`dice_loss`; ``alpha = beta = 0.5`` is the soft Dice
    loss, ``beta > alpha`` costs missed tumour more than false alarms. MONAI's ``TverskyLoss``
    with ``smooth_nr = smooth_dr = s``.

    Args:
        logits: ``(B, H, W, C)`` float logits (any float dtype).
        labels: ``(B, H, W)`` integer class ids.
        valid: optional ``(B,)`` bool; examples with ``False`` are ignored.
        alpha: weight of false positives.
        beta: weight of false negatives.
        smooth: the additive smoothing ``s``.
        per_image: per-image indices averaged over valid images, instead of pooled sums.

    Returns:
        Float32 scalar in ``[0, 1]``; 0 when no example is valid.
    """
    return _overlap_loss(
        logits, labels, valid, alpha=alpha, beta=beta, smooth=smooth, per_image=per_image
    )


def focal_tversky_loss(
    logits: jax.Array,
    labels: jax.Array,
    valid: jax.Array | None = None,
    *,
    alpha: float = 0.3,
    beta: float = 0.7,
    gamma: float = 0.75,
    smooth: float = 1.0,
    per_image: bool = False,
) -> jax.Array:
    """Focal Tversky loss (Abraham & Khan 2019): ``(1 - TI) ** gamma``, TI as in `tversky_loss`.

    The defaults are the paper's: ``alpha = 0.3``, ``beta = 0.7`` and the exponent
    ``gamma = 1 / (4/3) = 0.75`` (classes averaged after the exponent).

    Args:
        logits: ``(B, H, W, C)`` float logits (any float dtype).
        labels: ``(B, H, W)`` integer class ids.
        valid: optional ``(B,)`` bool; examples with ``False`` are ignored.
        alpha: weight of false positives.
        beta: weight of false negatives.
        gamma: the exponent applied to ``1 - TI``.
        smooth: the additive smoothing ``s``.
        per_image: per-image indices averaged over valid images, instead of pooled sums.

    Returns:
        Float32 scalar in ``[0, 1]``; 0 when no example is valid.
    """
    return _overlap_loss(
        logits,
        labels,
        valid,
        alpha=alpha,
        beta=beta,
        smooth=smooth,
        per_image=per_image,
        gamma=gamma,
    )


register_loss("dice", dice_loss, metric="dice_loss")
register_loss("tversky", tversky_loss)
register_loss("focal_tversky", focal_tversky_loss)
