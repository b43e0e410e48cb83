"""Segmentation losses, and the registry ``config.loss.name`` chooses them from.

Registered (`LOSSES`, `register_loss`): ``bce_dice`` (today's default, `segmentation_loss`),
``bce`` (binary or softmax cross-entropy), ``dice`` (pooled over the batch, or
``dice(per_image=true)``), ``focal`` (``optax.sigmoid_focal_loss``), ``tversky`` and
``focal_tversky``. `build_loss` turns a setting such as ``"focal(gamma=2):1,dice:1"`` (a weighted
sum, `bts_jax.train.registry`) into the trainer's loss function; `loss_from_config` reads
``config.loss``.

Conventions shared with the model and the trainer:

- ``logits``: float array ``(B, H, W, C)``, any dtype. ``C == 1`` is one binary tumour logit
  (sigmoid); ``C > 1`` are class logits (softmax over the last axis).
- ``labels``: integer array ``(B, H, W)`` of class ids (``{0, 1}`` for the binary case).
- ``valid``: optional bool array ``(B,)``. Examples with ``valid=False`` (padding in the last
  evaluation batch) contribute nothing; ``None`` means every example counts.

Every loss casts the logits to float32 before anything else (docs/design.md section 4: losses
stay float32 whatever the compute dtype), so bfloat16 models get float32 losses and gradients
into the logits.
All functions are jittable and contain no Python control flow on array values, so they work on
sharded global arrays inside a ``jax.jit``-compiled step.
"""

import jax
import jax.numpy as jnp
import optax

from bts_jax.train.registry import register_loss


def _check_shapes(logits: jax.Array, labels: jax.Array, valid: jax.Array | None) -> None:
    # Shapes are static under jit, so these checks cost nothing at run time and turn silent
    # broadcasting mistakes (e.g. labels with a trailing channel axis) into clear errors.
    if logits.ndim != 4:
        raise ValueError(f"logits must be (B, H, W, C), got shape {logits.shape}")
    if labels.shape != logits.shape[:3]:
        raise ValueError(
            f"labels must be (B, H, W) = {logits.shape[:3]} to match logits, got {labels.shape}"
        )
    if valid is not None and valid.shape != logits.shape[:1]:
        raise ValueError(f"valid must be (B,) = {logits.shape[:1]}, got {valid.shape}")


def _pixel_weights(labels: jax.Array, valid: jax.Array | None) -> jax.Array:
    """Float32 (B, H, W) weights: 1 for pixels of valid examples, 0 for padded examples."""
    if valid is None:
        return jnp.ones(labels.shape, jnp.float32)
    return jnp.broadcast_to(valid.astype(jnp.float32)[:, None, None], labels.shape)


def _weighted_mean(values: jax.Array, weights: jax.Array) -> jax.Array:
    # A batch made only of padding has zero weight; clamping the denominator returns 0 instead of
    # NaN, so such a batch cannot trip the trainer's NaN guard.
    return jnp.sum(values * weights) / jnp.maximum(jnp.sum(weights), 1.0)


def sigmoid_binary_cross_entropy(
    logits: jax.Array, labels: jax.Array, valid: jax.Array | None = None
) -> jax.Array:
    """Binary cross-entropy of one tumour logit per pixel, averaged over valid pixels.

    ``loss = mean_{valid pixels} [-g log sigmoid(x) - (1 - g) log(1 - sigmoid(x))]``, computed from
    the logits in the numerically stable form of ``optax.sigmoid_binary_cross_entropy``.

    Args:
        logits: ``(B, H, W, 1)`` float logits of the tumour class (any float dtype).
        labels: ``(B, H, W)`` integer labels in ``{0, 1}``.
        valid: optional ``(B,)`` bool; examples with ``False`` are ignored.

    Returns:
        Float32 scalar. 0 when no example is valid.
    """
    _check_shapes(logits, labels, valid)
    if logits.shape[-1] != 1:
        raise ValueError(f"binary cross-entropy needs one logit channel, got {logits.shape[-1]}")
    x = logits[..., 0].astype(jnp.float32)
    per_pixel = optax.sigmoid_binary_cross_entropy(x, labels.astype(jnp.float32))
    return _weighted_mean(per_pixel, _pixel_weights(labels, valid))


def softmax_cross_entropy(
    logits: jax.Array, labels: jax.Array, valid: jax.Array | None = None
) -> jax.Array:
    """Softmax cross-entropy with integer labels, averaged over valid pixels.

    ``loss = mean_{valid pixels} [-log softmax(x)_g]`` via
    ``optax.softmax_cross_entropy_with_integer_labels`` (stable log-sum-exp).

    Args:
        logits: ``(B, H, W, C)`` float class logits, ``C >= 2`` (any float dtype).
        labels: ``(B, H, W)`` integer class ids in ``[0, C)``.
        valid: optional ``(B,)`` bool; examples with ``False`` are ignored.

    Returns:
        Float32 scalar. 0 when no example is valid.
    """
    _check_shapes(logits, labels, valid)
    x = logits.astype(jnp.float32)
    per_pixel = optax.softmax_cross_entropy_with_integer_labels(x, labels.astype(jnp.int32))
    return _weighted_mean(per_pixel, _pixel_weights(labels, valid))


def soft_dice_loss(
    logits: jax.Array,
    labels: jax.Array,
    valid: jax.Array | None = None,
    *,
    smooth: float = 1.0,
) -> jax.Array:
    """Soft Dice loss, pooled over the whole (valid part of the) batch.

    For one class ``k`` with probabilities ``p`` and one-hot ground truth ``g``, the sums running
    over every valid pixel of every valid image of the batch (not per image):

        ``dice_k = (2 * sum(p * g) + s) / (sum(p) + sum(g) + s)``,  ``s = smooth``.

    - ``C == 1``: ``p = sigmoid(logit)`` of the tumour, ``g = (label == 1)``;
      ``loss = 1 - dice_tumour``.
    - ``C > 1``: ``p = softmax(logits)``, ``g = one_hot(label)``;
      ``loss = 1 - mean_k dice_k`` over all ``C`` classes, background included.

    Pooling over the batch keeps the loss well behaved for the many slices with no tumour: an
    all-background batch predicted as background gives ``1 - s / (sum(p) + s)``, close to 0, while a
    per-image Dice would be 0/0-dominated on such slices.

    Args:
        logits: ``(B, H, W, C)`` float logits (any float dtype).
        labels: ``(B, H, W)`` integer class ids.
        valid: optional ``(B,)`` bool; examples with ``False`` are ignored.
        smooth: the additive smoothing ``s`` in numerator and denominator.

    Returns:
        Float32 scalar in ``[0, 1]``. 0 when no example is valid.
    """
    _check_shapes(logits, labels, valid)
    x = logits.astype(jnp.float32)
    w = _pixel_weights(labels, valid)[..., None]  # (B, H, W, 1)
    num_classes = x.shape[-1]
    if num_classes == 1:
        probs = jax.nn.sigmoid(x)
        target = (labels == 1).astype(jnp.float32)[..., None]
    else:
        probs = jax.nn.softmax(x, axis=-1)
        target = jax.nn.one_hot(labels, num_classes, dtype=jnp.float32)
    probs = probs * w
    target = target * w
    axes = (0, 1, 2)
    intersection = jnp.sum(probs * target, axis=axes)  # (C,)
    denominator = jnp.sum(probs, axis=axes) + jnp.sum(target, axis=axes)
    dice = (2.0 * intersection + smooth) / (denominator + smooth)
    return 1.0 - jnp.mean(dice)


def segmentation_loss(
    logits: jax.Array,
    labels: jax.Array,
    valid: jax.Array | None = None,
    *,
    bce_weight: float = 1.0,
    dice_weight: float = 1.0,
) -> tuple[jax.Array, dict[str, jax.Array]]:
    """Training loss: ``bce_weight * cross_entropy + dice_weight * soft_dice``.

    The cross-entropy is :func:`sigmoid_binary_cross_entropy` for ``C == 1`` and
    :func:`softmax_cross_entropy` for ``C > 1``; the Dice term is :func:`soft_dice_loss` with
    ``smooth=1``. Weights come from ``config.loss.bce_weight`` and ``config.loss.dice_weight``.

    Args:
        logits: ``(B, H, W, C)`` float logits (any float dtype).
        labels: ``(B, H, W)`` integer class ids.
        valid: optional ``(B,)`` bool; examples with ``False`` are ignored.
        bce_weight: weight of the cross-entropy term.
        dice_weight: weight of the soft Dice term.

    Returns:
        ``(loss, components)``: the float32 scalar loss and a dict of float32 scalars with keys
        ``"loss"``, ``"cross_entropy"`` and ``"dice_loss"`` (unweighted components).
    """
    _check_shapes(logits, labels, valid)
    if logits.shape[-1] == 1:
        cross_entropy = sigmoid_binary_cross_entropy(logits, labels, valid)
    else:
        cross_entropy = softmax_cross_entropy(logits, labels, valid)
    dice = soft_dice_loss(logits, labels, valid)
    loss = bce_weight * cross_entropy + dice_weight * dice
    return loss, {"loss": loss, "cross_entropy": cross_entropy, "dice_loss": dice}


def bce_loss(logits: jax.Array, labels: jax.Array, valid: jax.Array | None = None) -> jax.Array:
    """Cross-entropy averaged over valid pixels: binary for ``C == 1``, softmax for ``C > 1``.

    Args:
        logits: ``(B, H, W, C)`` float logits (any float dtype).
        labels: ``(B, H, W)`` integer class ids.
        valid: optional ``(B,)`` bool; examples with ``False`` are ignored.

    Returns:
        Float32 scalar (:func:`sigmoid_binary_cross_entropy` or :func:`softmax_cross_entropy`).
    """
    if logits.shape[-1] == 1:
        return sigmoid_binary_cross_entropy(logits, labels, valid)
    return softmax_cross_entropy(logits, labels, valid)


def focal_loss(
    logits: jax.Array,
    labels: jax.Array,
    valid: jax.Array | None = None,
    *,
    gamma: float = 2.0,
    alpha: float | None = None,
) -> jax.Array:
    """Sigmoid focal loss (Lin et al. 2017) averaged over valid pixels.

    ``FL = a_t (1 - p_t) ** gamma * BCE`` per pixel (``optax.sigmoid_focal_loss``); ``alpha=None``
    weighs both classes 1, as MONAI's ``FocalLoss`` and optax do (the paper used 0.25).

    Args:
        logits: ``(B, H, W, 1)`` float logits of the tumour class (any float dtype).
        labels: ``(B, H, W)`` integer labels in ``{0, 1}``.
        valid: optional ``(B,)`` bool; examples with ``False`` are ignored.
        gamma: the focusing exponent (0 = BCE).
        alpha: weight of the tumour class, ``1 - alpha`` of background; None = no weighting.

    Returns:
        Float32 scalar; 0 when no example is valid.
    """
    _check_shapes(logits, labels, valid)
    if logits.shape[-1] != 1:
        raise ValueError(f"the focal loss needs one logit channel, got {logits.shape[-1]}")
    x = logits[..., 0].astype(jnp.float32)
    per_pixel = optax.sigmoid_focal_loss(x, labels.astype(jnp.float32), alpha=alpha, gamma=gamma)
    return _weighted_mean(per_pixel, _pixel_weights(labels, valid))


def bce_dice_loss(
    logits: jax.Array,
    labels: jax.Array,
    valid: jax.Array | None = None,
    *,
    bce_weight: float = 1.0,
    dice_weight: float = 1.0,
) -> tuple[jax.Array, dict[str, jax.Array]]:
    """Today's default: :func:`segmentation_loss`, the weighted cross-entropy + pooled Dice.

    Args:
        logits: ``(B, H, W, C)`` float logits (any float dtype).
        labels: ``(B, H, W)`` integer class ids.
        valid: optional ``(B,)`` bool; examples with ``False`` are ignored.
        bce_weight: weight of the cross-entropy term.
        dice_weight: weight of the soft Dice term.

    Returns:
        ``(loss, components)`` as :func:`segmentation_loss` (metrics ``cross_entropy`` and
        ``dice_loss``, the keys of every run before the registry).
    """
    return segmentation_loss(logits, labels, valid, bce_weight=bce_weight, dice_weight=dice_weight)


register_loss("bce_dice", bce_dice_loss)
register_loss("bce", bce_loss, metric="cross_entropy")
register_loss("focal", focal_loss)
