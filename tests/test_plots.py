import os

import numpy as np
import pytest
from PIL import Image

from bts_jax.evaluation import figures

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _read_png(path):
    with open(path, "rb") as f:
        assert f.read(8) == PNG_MAGIC
    with Image.open(path) as im:
        im.load()
        return im.size, np.asarray(im)


def test_plot_training_curves_writes_two_pngs(tmp_path):
    history = [
        {"epoch": e, "train_loss": 1.0 / e, "val_loss": 1.2 / e, "val_miou": 0.5 + 0.05 * e}
        for e in range(1, 6)
    ]
    history.append({"epoch": 6, "train_loss": 0.1})  # no evaluation this epoch
    paths = figures.plot_training_curves(history, str(tmp_path / "plots"))
    assert [os.path.basename(p) for p in paths] == ["loss.png", "miou.png"]
    for path in paths:
        size, pixels = _read_png(path)
        assert size == (600, 400)
        assert pixels.std() > 0  # something was drawn


def test_plot_training_curves_skips_missing_series(tmp_path):
    paths = figures.plot_training_curves([{"train_loss": 0.5}, {"train_loss": 0.4}], str(tmp_path))
    assert [os.path.basename(p) for p in paths] == ["loss.png"]
    assert not (tmp_path / "miou.png").exists()


def _square_case():
    image = np.linspace(0.0, 1.0, 20 * 20).reshape(20, 20)
    gt = np.zeros((20, 20), np.int32)
    gt[5:10, 5:10] = 1
    pred = np.zeros((20, 20), np.int32)
    pred[5:10, 7:12] = 1
    return image, gt, pred


def test_overlay_contours_on_square():
    image, gt, pred = _square_case()
    out = figures.overlay_contours(image, gt, pred)
    assert out.dtype == np.uint8 and out.shape == (20, 20, 3)
    gray = np.round(image * 255).astype(np.uint8)

    gt_ring = np.zeros((20, 20), bool)
    gt_ring[5:10, 5:10] = True
    gt_ring[6:9, 6:9] = False
    pred_ring = np.zeros((20, 20), bool)
    pred_ring[5:10, 7:12] = True
    pred_ring[6:9, 8:11] = False
    np.testing.assert_array_equal(figures.mask_contour(gt), gt_ring)

    np.testing.assert_array_equal(out[gt_ring & ~pred_ring], np.tile(figures.GT_COLOUR, (10, 1)))
    np.testing.assert_array_equal(out[pred_ring & ~gt_ring], np.tile(figures.PRED_COLOUR, (10, 1)))
    both = gt_ring & pred_ring  # top and bottom rows, columns 7..9
    assert both.sum() == 6
    np.testing.assert_array_equal(out[both], np.tile(figures.BOTH_COLOUR, (6, 1)))
    # Every pixel off the contours keeps its gray value in all three channels.
    off = ~(gt_ring | pred_ring)
    for c in range(3):
        np.testing.assert_array_equal(out[..., c][off], gray[off])


def test_overlay_contours_uint8_and_no_masks():
    image = (np.arange(64, dtype=np.uint8) * 4).reshape(8, 8)
    out = figures.overlay_contours(image[..., None])
    np.testing.assert_array_equal(out, np.repeat(image[..., None], 3, axis=-1))
    with pytest.raises(ValueError, match="differs from image"):
        figures.overlay_contours(image, mask=np.zeros((4, 4)))


@pytest.mark.parametrize("overlay", [False, True])
def test_save_comparison_figure(tmp_path, overlay):
    image, gt, pred = _square_case()
    n = 3
    path = figures.save_comparison_figure(
        [image] * n,
        [gt] * n,
        [pred] * n,
        [gt] * n,
        str(tmp_path / "cmp" / "figure.png"),
        names=("U-Net", "Improved U-Net"),
        overlay=overlay,
        cell_inches=1.0,
    )
    size, pixels = _read_png(path)
    assert size == (400, 300)  # 4 columns x 3 rows of 100 px panels
    assert pixels.std() > 0


def test_save_comparison_figure_length_mismatch(tmp_path):
    image, gt, pred = _square_case()
    with pytest.raises(ValueError, match="equal length"):
        figures.save_comparison_figure([image], [gt], [pred], [], str(tmp_path / "x.png"))


def test_contour_thickness_grows_with_the_image():
    assert [figures.contour_thickness((s, s)) for s in (20, 128, 256, 512)] == [1, 1, 2, 3]
    assert figures.contour_thickness((512, 256, 1)) == 2


def test_overlay_contours_thick_band_and_empty_prediction_frame():
    image = np.zeros((40, 40), np.uint8)
    gt = np.zeros((40, 40), np.int32)
    gt[10:30, 10:30] = 1
    out = figures.overlay_contours(image, gt, gt, thickness=3)
    band = np.zeros((40, 40), bool)
    band[10:30, 10:30] = True
    band[13:27, 13:27] = False
    np.testing.assert_array_equal(np.all(out == figures.BOTH_COLOUR, axis=-1), band)
    assert not out[~band].any()  # inner band only, no frame: the prediction is not empty

    empty = figures.overlay_contours(image, gt, np.zeros_like(gt), thickness=2)
    frame = np.ones((40, 40), bool)
    frame[4:-4, 4:-4] = False
    np.testing.assert_array_equal(np.all(empty == figures.EMPTY_COLOUR, axis=-1), frame)
    np.testing.assert_array_equal(empty[10, 10], figures.GT_COLOUR)  # the missed tumour still shows
    plain = figures.overlay_contours(image, gt, np.zeros_like(gt), thickness=2, mark_empty=False)
    assert not np.all(plain == figures.EMPTY_COLOUR, axis=-1).any()
    # No prediction given: nothing to mark.
    assert not np.all(figures.overlay_contours(image, gt) == figures.EMPTY_COLOUR, axis=-1).any()
    with pytest.raises(ValueError, match="thickness"):
        figures.overlay_contours(image, gt, thickness=0)
