"""PNG figures: training curves (the paper's figures 4-7), contour overlays and model comparisons.

The end of training draws the final evaluation's predictions on their images
(`save_prediction_overlays`); `bts_jax.inference.compare` draws models side by side. Figures are
built with matplotlib's object API (``matplotlib.figure.Figure`` rendered by the Agg
canvas) rather than ``pyplot``: no display or GUI backend is touched, no global figure state is
kept between calls, and importing this module does not change the backend of a user's session.
"""

import os
from collections.abc import Mapping, Sequence
from typing import Any

import ml_collections
import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from PIL import Image
from scipy import ndimage

from bts_jax.data import images as host_images
from bts_jax.data import preprocessing
from bts_jax.data.formats import MASK_THRESHOLD
from bts_jax.evaluation.per_image import mask_contour
from bts_jax.workdir.layout import LOSS_FIGURE, MIOU_FIGURE

# RGB colours of the contours drawn by overlay_contours.
GT_COLOUR = (0, 255, 0)  # green: ground truth
PRED_COLOUR = (255, 0, 0)  # red: prediction
BOTH_COLOUR = (255, 255, 0)  # yellow: where the two contours coincide
EMPTY_COLOUR = (255, 0, 255)  # magenta frame: the prediction holds no foreground at all

_DPI = 100


def _save(fig: Figure, path: str) -> str:
    FigureCanvasAgg(fig)  # attaches the Agg canvas, so savefig never looks for a GUI backend
    parent = os.path.dirname(path)
    if parent:
        os.makedirs(parent, exist_ok=True)
    fig.savefig(path, dpi=_DPI, format="png")
    return path


def _series(history: Sequence[Mapping[str, float]], key: str) -> tuple[list, list]:
    # Epochs without the key (e.g. no validation that epoch) or with a None value are skipped.
    xs, ys = [], []
    for i, record in enumerate(history):
        value = record.get(key)
        if value is None:
            continue
        xs.append(record.get("epoch", i + 1))
        ys.append(float(value))
    return xs, ys


def plot_training_curves(
    history: Sequence[Mapping[str, float]],
    out_dir: str,
    *,
    figsize: tuple[float, float] = (6.0, 4.0),
) -> list[str]:
    """Writes the per-epoch loss and mIoU curves as PNGs (the paper's figures 4-7).

    - ``loss.png``: ``train_loss`` and ``val_loss`` against ``epoch``.
    - ``miou.png``: ``val_miou`` against ``epoch``.

    A figure is written only when at least one of its series has a value; missing keys or ``None``
    values in a record are skipped (e.g. epochs without evaluation).

    Args:
        history: list of per-epoch dicts such as
            ``{"epoch": 1, "train_loss": 0.6, "val_loss": 0.5, "val_miou": 0.7}``; ``epoch``
            defaults to the 1-based position in the list.
        out_dir: folder for the PNGs (created if needed).
        figsize: figure size in inches; the PNGs are ``100 * figsize`` pixels (width, height).

    Returns:
        Paths of the files written, in the order loss, mIoU.
    """
    os.makedirs(out_dir, exist_ok=True)
    paths = []
    panels = [
        (LOSS_FIGURE, "Loss", [("train_loss", "train"), ("val_loss", "validation")]),
        (MIOU_FIGURE, "mIoU", [("val_miou", "validation")]),
    ]
    for filename, ylabel, keys in panels:
        series = [(label, *_series(history, key)) for key, label in keys]
        series = [s for s in series if s[1]]
        if not series:
            continue
        fig = Figure(figsize=figsize, dpi=_DPI)
        ax = fig.add_subplot()
        for label, xs, ys in series:
            ax.plot(xs, ys, marker="o", markersize=3, label=label)
        ax.set_xlabel("epoch")
        ax.set_ylabel(ylabel)
        ax.set_title(f"{ylabel} per epoch")
        ax.grid(True, alpha=0.3)
        ax.legend()
        fig.tight_layout()
        paths.append(_save(fig, os.path.join(out_dir, filename)))
    return paths


def _to_uint8_gray(image: np.ndarray) -> np.ndarray:
    image = np.asarray(image)
    if image.ndim == 3 and image.shape[-1] == 1:
        image = image[..., 0]
    if image.ndim != 2:
        raise ValueError(f"image must be (H, W) or (H, W, 1) grayscale, got {image.shape}")
    if image.dtype == np.uint8:
        return image
    # Float images are the pipeline's [0, 1] scale; clip so out-of-range values don't wrap.
    return np.round(np.clip(image.astype(np.float64), 0.0, 1.0) * 255.0).astype(np.uint8)


def contour_thickness(shape: Sequence[int]) -> int:
    """Contour width in pixels that stays visible when an overlay is viewed whole.

    One pixel up to about 250 px, then growing with the image: 2 px at 256, 3 px at 512.

    Args:
        shape: the image shape ``(H, W, ...)``.

    Returns:
        The width, at least 1.
    """
    return max(1, round(min(shape[0], shape[1]) / 170))


def _contour_band(mask: np.ndarray, thickness: int) -> np.ndarray:
    if thickness == 1:
        return mask_contour(mask)
    m = np.asarray(mask) > 0
    # An inner band: it never covers the pixels just outside the mask, and a tumour thinner than
    # the band is drawn filled, which keeps tiny tumours visible.
    return m & ~ndimage.binary_erosion(m, iterations=thickness, border_value=0)


def overlay_contours(
    image: np.ndarray,
    mask: np.ndarray | None = None,
    prediction: np.ndarray | None = None,
    *,
    thickness: int | None = None,
    mark_empty: bool = True,
) -> np.ndarray:
    """Grayscale image as RGB with the ground-truth and predicted contours drawn on it.

    Ground truth is green, prediction red, pixels on both contours yellow. Each contour is an
    inner band of ``thickness`` pixels (`mask_contour` for 1). A given but empty prediction (no
    foreground pixel: a missed tumour when the mask has one) gets a magenta frame around the
    whole image, so such images stand out in a folder of overlays. Every other pixel keeps the
    image's gray value.

    Args:
        image: ``(H, W)`` or ``(H, W, 1)`` grayscale, uint8 or float in ``[0, 1]`` (clipped).
        mask: optional ``(H, W)`` ground-truth mask; nonzero = foreground.
        prediction: optional ``(H, W)`` predicted mask; nonzero = foreground.
        thickness: contour width in pixels; default `contour_thickness` of the image (1 px on
            small images, 3 px at 512x512).
        mark_empty: draw the frame (``2 * thickness`` px wide) when ``prediction`` is empty.

    Returns:
        uint8 ``(H, W, 3)`` RGB image.
    """
    gray = _to_uint8_gray(image)
    thickness = contour_thickness(gray.shape) if thickness is None else int(thickness)
    if thickness < 1:
        raise ValueError(f"thickness must be >= 1, got {thickness}")
    rgb = np.repeat(gray[..., None], 3, axis=-1)
    contours = []
    for name, m in (("mask", mask), ("prediction", prediction)):
        if m is None:
            contours.append(np.zeros(gray.shape, bool))
            continue
        if np.shape(m) != gray.shape:
            raise ValueError(f"{name} shape {np.shape(m)} differs from image shape {gray.shape}")
        contours.append(_contour_band(m, thickness))
    gt_c, pred_c = contours
    rgb[gt_c & ~pred_c] = GT_COLOUR
    rgb[pred_c & ~gt_c] = PRED_COLOUR
    rgb[gt_c & pred_c] = BOTH_COLOUR
    if mark_empty and prediction is not None and not np.any(np.asarray(prediction) > 0):
        width = min(2 * thickness, (min(gray.shape) + 1) // 2)
        frame = np.ones(gray.shape, bool)
        frame[width:-width, width:-width] = False
        rgb[frame] = EMPTY_COLOUR
    return rgb


def save_comparison_figure(
    images: Sequence[np.ndarray],
    ground_truths: Sequence[np.ndarray],
    predictions_a: Sequence[np.ndarray],
    predictions_b: Sequence[np.ndarray],
    path: str,
    *,
    names: tuple[str, str] = ("A", "B"),
    overlay: bool = False,
    cell_inches: float = 2.5,
) -> str:
    """Side-by-side predictions of two models (the paper's figure 8) as one PNG.

    One row per image; columns: image, ground truth, model A, model B. With ``overlay=False``
    (as in the paper) masks are shown as black/white images; with ``overlay=True`` each mask
    column shows the image with the ground-truth contour (green) and that column's contour (red).

    Args:
        images: ``N`` grayscale images, each ``(H, W)`` or ``(H, W, 1)``, uint8 or float [0, 1].
        ground_truths: ``N`` masks ``(H, W)``; nonzero = foreground.
        predictions_a: ``N`` masks ``(H, W)`` of model A.
        predictions_b: ``N`` masks ``(H, W)`` of model B.
        path: output PNG path (parent folders are created).
        names: column titles of the two models.
        overlay: draw contours on the image instead of showing the bare masks.
        cell_inches: size of one panel; the PNG is ``4 * 100 * cell_inches`` by
            ``N * 100 * cell_inches`` pixels.

    Returns:
        ``path``.
    """
    n = len(images)
    if not n or not (len(ground_truths) == len(predictions_a) == len(predictions_b) == n):
        raise ValueError(
            "images, ground_truths, predictions_a and predictions_b must be non-empty and of "
            f"equal length; got {len(images)}, {len(ground_truths)}, {len(predictions_a)}, "
            f"{len(predictions_b)}"
        )
    titles = ("image", "ground truth", names[0], names[1])
    fig = Figure(figsize=(4 * cell_inches, n * cell_inches), dpi=_DPI)
    axes = fig.subplots(n, 4, squeeze=False)
    for row in range(n):
        gray = _to_uint8_gray(images[row])
        gt = np.asarray(ground_truths[row]) > 0
        panels: list[np.ndarray] = [gray]
        for m in (gt, predictions_a[row], predictions_b[row]):
            if overlay:
                panels.append(overlay_contours(gray, gt, None if m is gt else m))
            else:
                panels.append((np.asarray(m) > 0).astype(np.uint8) * 255)
        for col, panel in enumerate(panels):
            ax = axes[row, col]
            ax.imshow(panel, cmap="gray", vmin=0, vmax=255, interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            if row == 0:
                ax.set_title(titles[col])
    fig.subplots_adjust(left=0.01, right=0.99, bottom=0.01, top=1 - 0.3 / (n * cell_inches))
    return _save(fig, path)


def load_source(source: str | bytes) -> np.ndarray:
    """An example's image or mask as a uint8 (H, W) array: a file path, or encoded bytes (TFDS)."""
    if isinstance(source, bytes):  # TFDS examples carry the encoded bytes
        return preprocessing.decode_grayscale(preprocessing.tf.constant(source)).numpy()
    return host_images.load_grayscale(source)


def write_overlays(
    output_dir: str | os.PathLike,
    ids: Sequence[str],
    images: Sequence[np.ndarray],
    truths: Sequence[np.ndarray],
    predictions: Sequence[np.ndarray],
) -> list[str]:
    """Writes ``<id>.png`` per image: truth (green) and prediction (red) contours on the image.

    Args:
      output_dir: the folder (created if needed).
      ids: the images' ids, in order.
      images: uint8 (H, W) images.
      truths: their (H, W) binary masks.
      predictions: their (H, W) predicted class maps, at the images' sizes.

    Returns:
      The written paths, in order.
    """
    os.makedirs(output_dir, exist_ok=True)
    paths = []
    for example_id, image, truth, prediction in zip(ids, images, truths, predictions, strict=True):
        path = os.path.join(output_dir, f"{example_id}.png")
        Image.fromarray(overlay_contours(image, truth, prediction)).save(path)
        paths.append(path)
    return paths


def save_prediction_overlays(
    output_dir: str | os.PathLike,
    examples: Sequence[Any],
    predictions: Mapping[str, np.ndarray],
    data_config: ml_collections.ConfigDict,
) -> list[str]:
    """Draws predictions made at the model's input size on their images at the original size.

    Used at the end of training with the predictions of the final evaluation, so nothing is
    reloaded or compiled again. Each prediction is mapped back to its image's pixel grid exactly as
    `bts_jax.inference.predict_masks` does.

    Args:
      output_dir: where to write ``<id>.png``.
      examples: the examples drawn, in order (those without a prediction are skipped).
      predictions: id -> uint8 (S, S) class map at ``data_config.image_size``.
      data_config: the run's ``config.data``.

    Returns:
      The written paths.
    """
    shown = [e for e in examples if e.id in predictions]
    images = [load_source(e.image) for e in shown]
    truths = [(load_source(e.mask) > MASK_THRESHOLD).astype(np.uint8) for e in shown]
    restored = [
        host_images.restore_original_size(predictions[e.id], image.shape, data_config)
        for e, image in zip(shown, images, strict=True)
    ]
    return write_overlays(os.fspath(output_dir), [e.id for e in shown], images, truths, restored)
