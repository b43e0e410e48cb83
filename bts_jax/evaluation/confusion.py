"""Split-level metrics from confusion counts (docs/design.md section 4), on device and on host.

Inside the jitted eval step, :func:`predictions_from_logits` and :func:`confusion_matrix` turn a
batch into an int32 ``(K, K)`` count matrix: a plain sum, so it partitions over a sharded batch
without gathering pixels. :func:`metrics_from_confusion` turns counts accumulated over a whole split
into IoU, mIoU, Dice, precision and recall: never averages of per-batch ratios. A ratio whose
denominator is 0 is NaN ("undefined"); a class absent from both truth and prediction over the whole
split has IoU NaN and is left out of mIoU (the mean over the classes where IoU is defined).
"""

import math

import jax
import jax.numpy as jnp
import numpy as np

BINARY_CLASS_NAMES = ("background", "tumour")


def num_confusion_classes(num_classes: int) -> int:
    """Size K of the confusion matrix: ``max(num_classes, 2)``, as one logit means two classes.

    Args:
        num_classes: the model's number of output channels ``C``.

    Returns:
        ``K``.
    """
    return max(int(num_classes), 2)


def class_names(num_classes: int) -> tuple[str, ...]:
    """Names used in metric keys: ("background", "tumour") for binary, else "class_k".

    Args:
        num_classes: the model's number of output channels ``C``.

    Returns:
        A tuple of ``K = max(C, 2)`` names.
    """
    k = num_confusion_classes(num_classes)
    if k == 2:
        return BINARY_CLASS_NAMES
    return tuple(f"class_{i}" for i in range(k))


def predictions_from_logits(logits: jax.Array) -> jax.Array:
    """Hard class predictions from logits.

    For ``C == 1`` the tumour is predicted where ``sigmoid(logit) > 0.5``, computed as ``logit > 0``
    (same decision without the rounding of a sigmoid in low precision). For ``C > 1``: argmax.

    Args:
        logits: ``(B, H, W, C)`` float logits.

    Returns:
        int32 ``(B, H, W)`` class ids.
    """
    if logits.ndim != 4:
        raise ValueError(f"logits must be (B, H, W, C), got shape {logits.shape}")
    if logits.shape[-1] == 1:
        return (logits[..., 0] > 0).astype(jnp.int32)
    return jnp.argmax(logits, axis=-1).astype(jnp.int32)


def confusion_matrix(
    predictions: jax.Array,
    labels: jax.Array,
    num_classes: int,
    valid: jax.Array | None = None,
) -> jax.Array:
    """Pixel confusion matrix of one batch, jittable and sharding-friendly.

    ``cm[t, p]`` counts the pixels of valid examples with true class ``t`` and predicted class
    ``p``. Pixels whose label or prediction lies outside ``[0, K)`` (e.g. an ignore label 255) are
    not counted. The counts are computed as a sum over one-hot indicators rather than a scatter,
    so on a batch sharded over devices XLA reduces locally and then all-reduces K*K numbers.

    Args:
        predictions: integer ``(B, H, W)`` predicted class ids (see
            :func:`predictions_from_logits`).
        labels: integer ``(B, H, W)`` true class ids.
        num_classes: the model's number of output channels ``C`` (static); ``K = max(C, 2)``.
        valid: optional bool ``(B,)``; examples with ``False`` are not counted.

    Returns:
        int32 ``(K, K)``; rows are true classes, columns predicted classes. int32 holds any batch
        of fewer than 2**31 pixels; accumulate across batches in int64 on the host.
    """
    if predictions.shape != labels.shape or labels.ndim != 3:
        raise ValueError(
            f"predictions and labels must both be (B, H, W); got {predictions.shape} "
            f"and {labels.shape}"
        )
    k = num_confusion_classes(num_classes)
    classes = jnp.arange(k, dtype=jnp.int32)
    true_1h = labels.astype(jnp.int32)[..., None] == classes  # (B, H, W, K)
    pred_1h = predictions.astype(jnp.int32)[..., None] == classes
    if valid is not None:
        if valid.shape != labels.shape[:1]:
            raise ValueError(f"valid must be (B,) = {labels.shape[:1]}, got {valid.shape}")
        true_1h = true_1h & valid.astype(bool)[:, None, None, None]
    joint = true_1h[..., :, None] & pred_1h[..., None, :]  # (B, H, W, K, K), fused into the sum
    return jnp.sum(joint, axis=(0, 1, 2), dtype=jnp.int32)


def _ratio(numerator: float, denominator: float) -> float:
    return float(numerator) / float(denominator) if denominator > 0 else math.nan


def metrics_from_confusion(cm: np.ndarray | jax.Array) -> dict[str, float]:
    """Split-level metrics from an accumulated confusion matrix.

    With ``tp_k = cm[k, k]``, ``fp_k = sum_t cm[t, k] - tp_k``, ``fn_k = sum_p cm[k, p] - tp_k``:

    - ``iou_<name>`` for every class: ``tp_k / (tp_k + fp_k + fn_k)``; NaN when the class is absent
      from both truth and prediction (denominator 0).
    - ``miou``: mean of the defined (non-NaN) per-class IoUs — the paper's metric. NaN only when no
      class is defined (an empty matrix).
    - ``dice``, ``precision``, ``recall`` of the foreground, where foreground means any class
      ``> 0`` (for binary, the tumour): ``2tp / (2tp + fp + fn)``, ``tp / (tp + fp)``,
      ``tp / (tp + fn)``; NaN when the denominator is 0.
    - ``pixel_accuracy``: ``trace(cm) / sum(cm)``.

    Args:
        cm: integer ``(K, K)`` confusion matrix, rows = true class, columns = predicted class.

    Returns:
        Dict of Python floats with the keys above.
    """
    cm = np.asarray(cm, dtype=np.int64)
    if cm.ndim != 2 or cm.shape[0] != cm.shape[1] or cm.shape[0] < 2:
        raise ValueError(f"confusion matrix must be (K, K) with K >= 2, got {cm.shape}")
    k = cm.shape[0]
    names = class_names(k)
    tp = np.diag(cm)
    fp = cm.sum(axis=0) - tp
    fn = cm.sum(axis=1) - tp
    result: dict[str, float] = {}
    ious = []
    for i, name in enumerate(names):
        iou = _ratio(tp[i], tp[i] + fp[i] + fn[i])
        result[f"iou_{name}"] = iou
        ious.append(iou)
    defined = [v for v in ious if not math.isnan(v)]
    result["miou"] = float(np.mean(defined)) if defined else math.nan
    # Foreground vs background: collapse all classes > 0 into one.
    fg_tp = cm[1:, 1:].sum()
    fg_fp = cm[0, 1:].sum()
    fg_fn = cm[1:, 0].sum()
    result["dice"] = _ratio(2 * fg_tp, 2 * fg_tp + fg_fp + fg_fn)
    result["precision"] = _ratio(fg_tp, fg_tp + fg_fp)
    result["recall"] = _ratio(fg_tp, fg_tp + fg_fn)
    result["pixel_accuracy"] = _ratio(np.trace(cm), cm.sum())
    return result
