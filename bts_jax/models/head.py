"""The output layer's prior: its initial bias gives every pixel a chosen tumour probability.

With a zero bias every pixel starts at p = 0.5 while tumour is about 1.5% of the pixels, and the
first steps are spent learning the background. Lin et al. 2017 ("Focal Loss for Dense Object
Detection", section 4.1) start the classifier at the foreground prior pi instead: bias
``log(pi / (1 - pi))``, so ``sigmoid(bias) = pi``. ``config.model.output_bias_prior`` sets pi
(``"auto"``: the tumour pixel fraction of the training split, `bts_jax.data.tumour_pixel_fraction`);
unset keeps the zero bias. The model itself is unchanged: the bias is written into the
initialised parameters (:func:`with_output_bias`).
"""

from __future__ import annotations

import math
from typing import Any

import jax.numpy as jnp
import numpy as np

AUTO = "auto"
HEAD = "head"  # The output layer's submodule name in `UNet`.


def check_output_bias_prior(value: Any, where: str = "config.model.output_bias_prior") -> Any:
    """Validates an output-bias prior setting.

    Args:
      value: ``None`` (the zero bias), ``"auto"``, or a probability in (0, 1).
      where: the setting's name, for error messages.

    Returns:
      ``None``, ``"auto"`` or the probability as a float.

    Raises:
      ValueError: naming ``where``, for anything else (0, 1, negative, a string).
    """
    if value is None or value == AUTO:
        return value
    try:
        prior = float(value)
    except (TypeError, ValueError):
        prior = math.nan
    if isinstance(value, bool) or not 0.0 < prior < 1.0:
        raise ValueError(
            f"{where}={value!r}: give a probability strictly between 0 and 1 (e.g. 0.015), "
            f"{AUTO!r} for the training split's tumour pixel fraction, or None for a zero bias."
        )
    return prior


def prior_logit(prior: float) -> float:
    """``log(p / (1 - p))``: the logit whose sigmoid is ``prior``.

    Args:
      prior: a probability in (0, 1).

    Raises:
      ValueError: ``prior`` outside (0, 1).
    """
    prior = check_output_bias_prior(prior, "output bias prior")
    return math.log(prior / (1.0 - prior))


def output_bias(prior: float, num_classes: int) -> np.ndarray:
    """The head's initial bias for a tumour prior p.

    One class (a sigmoid logit): ``[logit(p)]``. K > 1 classes (softmax): 0 for the background
    (class 0) and ``log(p / ((K - 1) (1 - p)))`` for each other class, so that the softmax gives
    the background 1 - p and the K - 1 other classes p together (K = 2: ``[0, logit(p)]``).

    Args:
      prior: the tumour probability p in (0, 1).
      num_classes: the head's output channels K >= 1.

    Returns:
      float32 array of shape (K,).
    """
    if num_classes < 1:
        raise ValueError(f"num_classes must be >= 1, got {num_classes}.")
    logit = prior_logit(prior)
    if num_classes == 1:
        return np.array([logit], np.float32)
    foreground = logit - math.log(num_classes - 1)
    return np.array([0.0] + [foreground] * (num_classes - 1), np.float32)


def with_output_bias(params: dict[str, Any], bias: Any) -> dict[str, Any]:
    """``params`` with the head's bias replaced by ``bias`` (a new tree; pure, traceable).

    Args:
      params: a `UNet`'s parameters, with ``params["head"]["bias"]`` of shape (K,).
      bias: shape (K,) values (e.g. :func:`output_bias`).

    Returns:
      The parameters, the head's bias cast to its dtype; every other leaf is the same object.

    Raises:
      ValueError: the model has no head bias of that shape.
    """
    head = params.get(HEAD, {})
    if "bias" not in head or tuple(head["bias"].shape) != tuple(np.shape(bias)):
        raise ValueError(
            f"The output bias {np.shape(bias)} does not fit the model's head "
            f"({ {k: tuple(v.shape) for k, v in head.items()} })."
        )
    new_bias = jnp.asarray(bias, dtype=head["bias"].dtype)
    return {**params, HEAD: {**head, "bias": new_bias}}
