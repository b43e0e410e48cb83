"""The end of a run: the selected checkpoint scored with every metric, and what the user reads.

The best checkpoint (by validation mIoU) is scored on validation and, when the config has one, on
the test split (`final_evaluation`), through the eval step the run compiled already; the
validation predictions of that same evaluation are drawn to ``predictions/``. `evaluate_checkpoint`
does the same for any workdir later (``evaluate.py``); both score through `score_split`.
`run_summary` is the text ``train.py`` prints at the end. Every evaluation uses the weights
`bts_jax.train.state.eval_variables` chooses (the moving average of the weights when
``config.ema_decay > 0``), through the eval step.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Collection
from typing import Any

import jax
import ml_collections
from absl import logging

from bts_jax import data as data_lib
from bts_jax import evaluation, jsonio
from bts_jax import workdir as workdir_lib
from bts_jax.evaluation import figures
from bts_jax.train.setup import RunSetup, make_input_pipeline, setup_run
from bts_jax.train.state import abstract_train_state
from bts_jax.workdir.layout import PREDICTIONS_DIR, eval_file


@dataclasses.dataclass(frozen=True)
class TrainResult:
    """What one trained run found, as `bts_jax.train.train_and_evaluate` returns it.

    Attributes:
      seed: the run's seed (``config.seed``).
      workdir: the run's folder (``WORKDIR/seed_<s>`` for one seed of several).
      metrics: the full validation metrics of its best checkpoint (with its ``step``).
    """

    seed: int
    workdir: str
    metrics: dict[str, float]


def final_evaluation(
    config: ml_collections.ConfigDict,
    workdir: str,
    run: RunSetup,
    pipeline: data_lib.InputPipeline,
) -> dict[str, float]:
    """Scores the best checkpoint on validation (and test), and draws validation predictions.

    Writes ``eval_<split>.json``, ``per_image_<split>.csv`` and ``predictions/`` on process 0.

    Args:
      config: the run's config.
      workdir: its folder.
      run: its set-up (the compiled eval step is reused).
      pipeline: its input.

    Returns:
      The validation metrics of the best checkpoint (with its ``step``).
    """
    selected = _restore(config, run, workdir, "best")
    drawn = pipeline.examples("validation")[: int(config.num_predictions)]
    result = None
    for split in _final_splits(pipeline):
        keep_ids = [e.id for e in drawn] if split == "validation" else ()
        found = score_split(run, selected, pipeline, workdir, split, keep_ids)
        if split == "validation":
            if jax.process_index() == 0:
                figures.save_prediction_overlays(
                    os.path.join(workdir, PREDICTIONS_DIR), drawn, found.predictions, config.data
                )
            result = found.metrics
    return result


def _final_splits(pipeline: data_lib.InputPipeline) -> list[str]:
    # The test split is reported; a config without one (test_fraction=0) has only validation.
    return ["validation", "test"] if pipeline.examples("test") else ["validation"]


def _restore(config: ml_collections.ConfigDict, run: RunSetup, workdir: str, which: str) -> Any:
    # Restored straight onto the eval mesh the run's eval step was compiled for.
    abstract = abstract_train_state(config, run.model, run.optimizer, run.eval_mesh)
    state = workdir_lib.restore_train_state(workdir, abstract, which)
    logging.info(
        "Evaluating %s (step %d) with %s.",
        workdir,
        int(state.step),
        workdir_lib.describe_weights(config),
    )
    return state


def score_split(
    run: RunSetup,
    state: Any,
    pipeline: data_lib.InputPipeline,
    workdir: str,
    split: str,
    keep_ids: Collection[str] = (),
) -> evaluation.Evaluation:
    """Scores a model on a split of its data and writes its evaluation files (process 0).

    The files are ``eval_<split>.json`` and ``per_image_<split>.csv``. This is the one path of a
    checkpoint's own scores on its data: the end of training (`final_evaluation`, so each cell of
    a sweep too) and ``evaluate.py`` (`evaluate_checkpoint`, reached through
    `bts_jax.inference.scoring.score_split`) both write these files from here.

    Args:
      run: the run's set-up (its compiled eval step returning predictions).
      state: the restored train state, on ``run.eval_mesh``.
      pipeline: the run's input.
      workdir: where the files go (written by process 0).
      split: "validation", "test" or "train".
      keep_ids: ids whose predicted class maps to keep (for drawing).

    Returns:
      The `bts_jax.evaluation.Evaluation`, its metrics with the checkpoint's ``step``.
    """
    found = evaluation.evaluate(
        run.eval_fn,
        state,
        pipeline.eval_batches(split),
        run.eval_mesh,
        num_classes=run.model.num_classes,
        keep_ids=keep_ids,
    )
    found.metrics["step"] = int(state.step)
    if jax.process_index() == 0:
        labels = {e.id: e.label for e in pipeline.examples(split)}
        evaluation.write_evaluation(found, workdir, split, labels)
    return found


def evaluate_checkpoint(
    config: ml_collections.ConfigDict,
    workdir: str,
    split: str = "validation",
    *,
    which: str = "best",
    run: RunSetup | None = None,
    pipeline: data_lib.InputPipeline | None = None,
) -> dict[str, float]:
    """Evaluates a workdir's best (or latest) checkpoint on a split with every metric.

    Prints nothing; writes ``workdir/eval_<split>.json`` and ``workdir/per_image_<split>.csv`` on
    process 0.

    Args:
      config: the run's config.
      workdir: the run's directory.
      split: the split to evaluate ("validation", "test" or "train").
      which: "best", "latest" or "step:N" (see `bts_jax.workdir.resolve_checkpoint`).
      run: an existing RunSetup to reuse compiled steps; built from ``config`` when None.
      pipeline: an existing input pipeline; built from ``config`` when None.

    Returns:
      The metrics dict (with the checkpoint's ``step``).
    """
    run = run or setup_run(config)
    pipeline = pipeline or make_input_pipeline(config)
    restored = _restore(config, run, workdir, which)
    return score_split(run, restored, pipeline, workdir, split).metrics


def run_summary(workdir: str, result: dict[str, float]) -> str:
    """The few lines a user reads at the end of a run: results, where things are, what next.

    Says which weights were evaluated (the moving average or the raw weights, from the
    workdir's ``config.json``).

    Args:
      workdir: the finished run's directory.
      result: the validation metrics `train_and_evaluate` returned.

    Returns:
      The text (no trailing newline).
    """
    workdir = os.path.abspath(workdir)

    def line(name: str, metrics: dict[str, Any]) -> str:
        shown = ", ".join(
            f"{key} {metrics[key]:.4f}"
            for key in ("miou", "dice", "dice_per_image", "hd95_mm", "loss")
            if isinstance(metrics.get(key), float | int)
        )
        return f"{name} (best checkpoint, step {int(metrics['step'])}): {shown}"

    lines = [line("Validation", {k: v for k, v in result.items()})]
    test_path = os.path.join(workdir, eval_file("test"))
    if os.path.isfile(test_path):
        lines.append(line("Test", jsonio.read_json(test_path)))
    lines.append(
        f"  Evaluated with {workdir_lib.describe_weights(workdir_lib.load_config(workdir))}."
    )
    empty = result.get("num_pred_empty_only")
    if empty:
        lines.append(
            f"  {int(empty)} of {int(result['num_images'])} validation slices with a "
            "tumour got an empty prediction (framed in magenta in predictions/)."
        )
    lines += [
        f"Outputs in {workdir}:",
        "  predictions/            validation slices: truth (green) and prediction (red) contours",
        "  eval_*.json, per_image_*.csv, metrics.csv, loss.png, miou.png, checkpoints/, best/",
        "Next:",
        f"  python predict.py --workdir {workdir} --inputs YOUR_IMAGES/ --output_dir masks/",
        f"  python evaluate.py --workdir {workdir} --split validation",
        f"  tensorboard --logdir {os.path.join(workdir, 'tensorboard')}",
    ]
    return "\n".join(lines)
