"""A run's per-epoch metrics on disk: ``metrics.jsonl``, ``metrics.csv`` and ``tensorboard/``."""

from __future__ import annotations

import os

from bts_jax import jsonio
from bts_jax.workdir.layout import METRICS_CSV, METRICS_JSONL, TENSORBOARD_DIR

# The fields of an epoch's row that are measured, not computed: they differ between any two runs
# of one config (on one machine too), so every reproducibility check leaves them out.
# ``train_images_per_s``: the epoch's training throughput; ``wall_s``: seconds since the run
# started training (set-up and compilation included), summed over its sittings.
MEASURED_FIELDS = ("train_images_per_s", "wall_s")


class MetricLogger:
    """Writes per-epoch metrics to JSON lines, CSV and TensorBoard; silent on processes != 0.

    Attributes:
      workdir: the run's directory.
      history: the per-epoch rows written so far (restored on resume).
      enabled: whether this process writes files.
    """

    def __init__(self, workdir: str, history: list[dict] | None = None, *, enabled: bool = True):
        self.workdir = workdir
        self.history = list(history or [])
        self.enabled = enabled
        self._tb = None
        if self.enabled:
            import tensorflow as tf  # Only for the TensorBoard event writer.

            self._tb = tf.summary.create_file_writer(os.path.join(workdir, TENSORBOARD_DIR))

    def write(self, row: dict[str, float]) -> None:
        """Appends one epoch's metrics and rewrites the log files from the whole history.

        Args:
          row: metric name -> value; must contain "epoch" and "step".
        """
        self.history.append(dict(row))
        if not self.enabled:
            return
        # Rewritten whole from the history, so a resumed run never duplicates an epoch's row.
        jsonio.write_jsonl(os.path.join(self.workdir, METRICS_JSONL), self.history)
        self._write_csv()
        import tensorflow as tf

        with self._tb.as_default(step=int(row["step"])):
            for key, value in row.items():
                if key not in ("epoch", "step") and isinstance(value, int | float):
                    tf.summary.scalar(key, value)
        self._tb.flush()

    def _write_csv(self) -> None:
        keys = sorted({k for row in self.history for k in row}, key=lambda k: (k != "epoch", k))
        lines = [",".join(keys)]
        lines += [",".join(str(row.get(k, "")) for k in keys) for row in self.history]
        jsonio.write_text(os.path.join(self.workdir, METRICS_CSV), "\n".join(lines) + "\n")


def read_metrics(workdir: str | os.PathLike) -> list[dict]:
    """The per-epoch rows of ``<workdir>/metrics.jsonl`` (empty when there is none).

    Args:
      workdir: a run's folder.

    Returns:
      The rows, oldest first (``null`` read as None).
    """
    path = os.path.join(os.fspath(workdir), METRICS_JSONL)
    return jsonio.read_jsonl(path) if os.path.isfile(path) else []


def without_measured(rows: list[dict]) -> list[dict]:
    """The rows of ``metrics.jsonl`` without their `MEASURED_FIELDS`: what two runs must share.

    Args:
      rows: per-epoch rows (`read_metrics`).

    Returns:
      New rows, every other key kept.
    """
    return [{k: v for k, v in row.items() if k not in MEASURED_FIELDS} for row in rows]
