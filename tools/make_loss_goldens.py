"""Writes the golden values of MONAI's segmentation losses that bts_jax's losses are tested against.

``tests/test_losses_registry.py`` checks each case's loss value and its gradient with respect to
the logits against this file, without PyTorch or MONAI: our ``config.loss.name`` of the case
must give MONAI's numbers to a relative 1e-5.

Pinned versions (``tests/data/monai_loss_goldens.json`` was made with exactly these):

* torch 2.13.0+cpu (the CPU wheel), numpy 2.4.6
* monai 1.6.1: ``monai.losses.DiceLoss``, ``FocalLoss``, ``TverskyLoss``, ``DiceFocalLoss``

Every MONAI loss runs with ``sigmoid=True`` (focal: ``use_softmax=False``) on one logit channel,
``reduction="mean"``. Where our defaults differ from MONAI's, the golden uses settings that match
ours, and says so in the case:

* smoothing: ours is ``s = 1`` added to numerator and denominator; MONAI's default is
  ``smooth_nr = smooth_dr = 1e-5``. The cases pass ``smooth_nr = smooth_dr = s`` for both values
  (``dice(smooth=1e-05)`` on our side for the second).
* pooling: our default ``dice`` pools the sums over the batch (MONAI ``batch=True``);
  ``dice(per_image=true)`` is MONAI's default ``batch=False``.
* padding: MONAI has no ``valid`` mask; the goldens use every example (``valid=None``). The tests
  check separately that padded examples change nothing.
* focal: MONAI's and optax's default ``alpha=None`` is ours too (Lin et al. used 0.25, tested as
  a case). The focal Tversky loss is not in MONAI: its golden is MONAI's ``TverskyLoss`` raised to
  the power ``gamma`` (one class, so the class mean commutes with the power).

The inputs are small and random (seeded): 3 images of 6x7 pixels, logits ~ 2 N(0, 1), the
second image's mask empty (where per-image and pooled losses differ most). Values and gradients
are computed in float64 from the float32 inputs.

Rerun (PyTorch is not a dependency of bts_jax)::

  python3 -m venv /work/monai-venv
  /work/monai-venv/bin/pip install torch==2.13.0 monai==1.6.1 numpy   # the CPU wheel
  /work/monai-venv/bin/python tools/make_loss_goldens.py [--out tests/data/monai_loss_goldens.json]
"""

import argparse
import functools
import json
import os

import monai
import numpy as np
import torch
from monai.losses import DiceFocalLoss, DiceLoss, FocalLoss, TverskyLoss

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHAPE = (3, 6, 7)  # (B, H, W)


def inputs() -> tuple[np.ndarray, np.ndarray]:
    """Float32 logits (B, H, W, 1) and int32 labels (B, H, W), image 1's mask empty."""
    rng = np.random.default_rng(20261207)
    logits = (2.0 * rng.normal(size=(*SHAPE, 1))).astype(np.float32)
    labels = (rng.random(SHAPE) < 0.35).astype(np.int32)
    labels[1] = 0
    return logits, labels


def cases() -> list[dict]:
    """Each case: its name, our ``config.loss.name``, the MONAI loss and a note on the settings."""
    rows = []
    for smooth, ours in ((1.0, ""), (1e-5, "smooth=1e-05")):
        for batch in (True, False):
            args = ",".join(a for a in (ours, "" if batch else "per_image=true") if a)
            rows.append(
                {
                    "name": f"dice_batch_{batch}_smooth_{smooth:g}",
                    "ours": f"dice({args})" if args else "dice",
                    "monai": DiceLoss(
                        sigmoid=True, batch=batch, smooth_nr=smooth, smooth_dr=smooth
                    ),
                }
            )
    for gamma, alpha in ((2.0, None), (2.0, 0.25), (0.5, None)):
        rows.append(
            {
                "name": f"focal_gamma_{gamma:g}_alpha_{alpha}",
                "ours": f"focal(gamma={gamma!r},alpha={alpha!r})",
                "monai": FocalLoss(gamma=gamma, alpha=alpha, use_softmax=False),
            }
        )
    for batch in (True, False):
        image = "" if batch else ",per_image=true"
        rows.append(
            {
                "name": f"tversky_0.3_0.7_batch_{batch}",
                "ours": f"tversky(alpha=0.3,beta=0.7{image})",
                "monai": TverskyLoss(
                    sigmoid=True, alpha=0.3, beta=0.7, smooth_nr=1.0, smooth_dr=1.0, batch=batch
                ),
            }
        )
    rows.append(
        {
            "name": "focal_tversky_0.3_0.7_gamma_0.75",
            "ours": "focal_tversky(alpha=0.3,beta=0.7,gamma=0.75)",
            "monai": TverskyLoss(
                sigmoid=True, alpha=0.3, beta=0.7, smooth_nr=1.0, smooth_dr=1.0, batch=True
            ),
            "power": 0.75,
            "note": "MONAI has no focal Tversky loss: MONAI's TverskyLoss ** 0.75",
        }
    )
    for batch, dice_w, focal_w in ((True, 1.0, 1.0), (False, 0.7, 0.3)):
        image = "" if batch else "(per_image=true)"
        rows.append(
            {
                "name": f"dice_focal_batch_{batch}_{dice_w:g}_{focal_w:g}",
                "ours": f"dice{image}:{dice_w!r},focal(gamma=2.0):{focal_w!r}",
                "monai": DiceFocalLoss(
                    sigmoid=True,
                    batch=batch,
                    smooth_nr=1.0,
                    smooth_dr=1.0,
                    gamma=2.0,
                    lambda_dice=dice_w,
                    lambda_focal=focal_w,
                ),
            }
        )
    return rows


def evaluate(case: dict, logits: np.ndarray, labels: np.ndarray) -> tuple[float, np.ndarray]:
    """MONAI's loss and its gradient with respect to the logits, float64, in our layout."""
    x = torch.tensor(logits.astype(np.float64)).permute(0, 3, 1, 2).requires_grad_(True)
    y = torch.tensor(labels.astype(np.float64))[:, None]
    value = case["monai"](x, y) ** case.get("power", 1.0)
    value.backward()
    return float(value.detach()), x.grad.permute(0, 2, 3, 1).numpy()


def _compact_json(golden: dict) -> str:
    """JSON with one line per top-level field and per case (the arrays stay on their line)."""
    dump = functools.partial(json.dumps, separators=(",", ":"))
    fields = [f"{dump(k)}:{dump(v)}" for k, v in golden.items() if k != "cases"]
    cases = ",\n".join(dump(case) for case in golden["cases"])
    return "{\n" + ",\n".join(fields) + ',\n"cases":[\n' + cases + "\n]}\n"


def main() -> None:
    """Computes every case and writes the JSON file."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", default=os.path.join(REPO, "tests/data/monai_loss_goldens.json"))
    out = parser.parse_args().out
    logits, labels = inputs()
    rows = []
    for case in cases():
        value, grad = evaluate(case, logits, labels)
        rows.append(
            {
                "name": case["name"],
                "ours": case["ours"],
                "monai": type(case["monai"]).__name__,
                "note": case.get("note", ""),
                "value": value,
                "grad": grad.astype(np.float32).tolist(),
            }
        )
        print(f"{case['name']:40s} {case['ours']:50s} {value:.8f}")
    golden = {
        "versions": {
            "monai": monai.__version__,
            "torch": torch.__version__,
            "numpy": np.__version__,
        },
        "logits": logits.tolist(),
        "labels": labels.tolist(),
        "cases": rows,
    }
    with open(out, "w") as f:
        f.write(_compact_json(golden))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
