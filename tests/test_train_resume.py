"""Whole runs of the small config: what a run writes, resume after a crash or a kill, guards.

All compare with one uninterrupted run (the `uninterrupted` fixture), trained once per module.
"""

import json
import os
import shutil
import signal
import subprocess
import sys
import time

import chex
import jax
import numpy as np
import pytest
from helpers import (
    read_text,
    resumable_config,
    small_config,
    tiny_config,
)

from bts_jax import data as data_lib
from bts_jax import sharding
from bts_jax import train as train_lib
from bts_jax import workdir as workdir_lib
from bts_jax.config_tools import apply_overrides
from bts_jax.train import loop, steps
from bts_jax.train import state as state_lib

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


# ----------------------------------------------------------------------------- full runs


class _AlteredTrainInput(data_lib.InputPipeline):
    """The run's real input, with its training batches passed through ``alter(index, batch)``.

    ``alter`` returns the batch to yield, or raises (a crash), or returns None to end the input.
    """

    def __init__(self, config, alter):
        super().__init__(config, process_index=0, process_count=1)
        self.alter = alter

    def train_batches(self, *, start_step=0):
        for index, batch in enumerate(super().train_batches(start_step=start_step)):
            batch = self.alter(index, batch)
            if batch is None:
                return
            yield batch


def _crash_at(train_batch):
    """Makes the training input die at its ``train_batch``-th batch (1-based), like a crash."""

    def alter(index, batch):
        if index + 1 == train_batch:
            raise RuntimeError("simulated crash")
        return batch

    return alter


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    """Two epochs of the small config, checkpointing every 2 steps, with no recompilation."""
    config = resumable_config()
    workdir = str(tmp_path_factory.mktemp("uninterrupted"))
    traced = chex.assert_max_traces(steps.train_step, n=1)
    original = steps.train_step
    steps.train_step = traced
    try:
        (trained,) = train_lib.train_and_evaluate(config, workdir)
        result = trained.metrics
        assert (trained.seed, trained.workdir) == (config.seed, os.path.abspath(workdir))
    finally:
        steps.train_step = original
    return config, workdir, result


def _final_params(config, workdir):
    run = train_lib.setup_run(config)
    target = state_lib.abstract_train_state(config, run.model, run.optimizer, run.mesh)
    latest, _ = workdir_lib.checkpoint_managers(workdir, config)
    restored, meta = workdir_lib.restore_checkpoint(latest, target)
    latest.close()
    return restored, meta


@pytest.mark.slow
def test_run_writes_everything_a_user_needs(uninterrupted):
    config, workdir, result = uninterrupted
    for name in (
        "config.json",
        "data_split.json",
        "metrics.jsonl",
        "metrics.csv",
        "loss.png",
        "miou.png",
        "eval_validation.json",
    ):
        assert os.path.isfile(os.path.join(workdir, name)), name
    assert os.listdir(os.path.join(workdir, "tensorboard"))
    expected_ids = data_lib.get_split_ids(config)["validation"][:8]
    assert sorted(os.listdir(os.path.join(workdir, "predictions"))) == sorted(
        f"{i}.png" for i in expected_ids
    )
    lines = read_text(workdir, "metrics.jsonl").splitlines()
    rows = [json.loads(line) for line in lines]
    assert [row["epoch"] for row in rows] == [1, 2]
    assert all(np.isfinite(row["val_miou"]) and np.isfinite(row["train_loss"]) for row in rows)
    # Seconds since training began, set-up and compilation included: the compute axis of a run.
    assert 0 < rows[0]["wall_s"] < rows[1]["wall_s"]
    saved = json.loads(read_text(workdir, "eval_validation.json"))
    for key in (
        "miou",
        "iou_tumour",
        "dice",
        "dice_per_image",
        "hd95_px",
        "hd95_mm",
        "boundary_iou",
        "precision",
        "recall",
        "loss",
    ):
        assert key in saved and key in result
    # The best checkpoint is the epoch with the highest validation mIoU.
    best_epoch = max(rows, key=lambda row: row["val_miou"])
    assert saved["step"] == best_epoch["step"]
    # The latest N (max_to_keep=3) of the saves at steps 2, 4, ..., 12 remain.
    steps = sorted(int(d) for d in os.listdir(os.path.join(workdir, "checkpoints")))
    assert steps == [8, 10, 12]


@pytest.mark.slow
def test_killed_and_resumed_run_ends_with_the_same_parameters(uninterrupted, tmp_path):
    config, reference_dir, _ = uninterrupted
    workdir = str(tmp_path / "resumed")
    # 6 steps per epoch: the crash comes at step 9, after the checkpoint of step 8.
    assert data_lib.steps_per_epoch(config, process_count=1) == 6
    crashing = _AlteredTrainInput(config, _crash_at(train_batch=9))
    with pytest.raises(RuntimeError, match="simulated crash"):
        train_lib.train_and_evaluate(config, workdir, pipeline=crashing)
    assert sorted(os.listdir(os.path.join(workdir, "checkpoints"))) == ["4", "6", "8"]
    # The save records the run's seconds so far; the resumed sitting counts on from them (made
    # large here, so that a resume counting from 0 could not pass).
    meta_path = os.path.join(workdir, "checkpoints", "8", "meta", "metadata")
    with open(meta_path) as f:
        meta = json.load(f)
    assert meta["wall_s"] > 0
    meta["wall_s"] = 1e6
    with open(meta_path, "w") as f:
        json.dump(meta, f)
    started = time.perf_counter()
    train_lib.train_and_evaluate(config, workdir)
    sitting = time.perf_counter() - started
    rows = [json.loads(line) for line in read_text(workdir, "metrics.jsonl").splitlines()]
    assert 0 < rows[0]["wall_s"] < 1e6 < rows[1]["wall_s"] < 1e6 + sitting

    resumed, resumed_meta = _final_params(config, workdir)
    reference, reference_meta = _final_params(config, reference_dir)
    assert int(resumed.step) == int(reference.step) == 12
    chex.assert_trees_all_equal(jax.device_get(resumed.params), jax.device_get(reference.params))
    chex.assert_trees_all_equal(
        jax.device_get(resumed.opt_state), jax.device_get(reference.opt_state)
    )
    assert [row["epoch"] for row in resumed_meta["history"]] == [1, 2]
    assert resumed_meta["history"][-1]["val_miou"] == reference_meta["history"][-1]["val_miou"]
    # Killed mid-epoch 2 (step 9), the resumed run still writes that epoch's train_loss over all
    # its steps: metrics.jsonl equals the uninterrupted run's but for the measured throughput.
    assert _rows_without_throughput(workdir) == _rows_without_throughput(reference_dir)


@pytest.mark.slow
def test_nan_loss_stops_the_run_and_keeps_the_last_good_checkpoint(tmp_path):
    config = small_config(**{"checkpoint.every_steps": 2, "log_every_steps": 1})
    workdir = str(tmp_path / "nan")

    def poison(index, batch):
        if index == 4:  # The 5th step sees a NaN image.
            return {**batch, "image": np.full_like(batch["image"], np.nan)}
        return batch

    poisoned = _AlteredTrainInput(config, poison)
    with pytest.raises(train_lib.NonFiniteLossError, match=r"nan at step 5.*step 4\) is intact"):
        train_lib.train_and_evaluate(config, workdir, pipeline=poisoned)
    assert sorted(os.listdir(os.path.join(workdir, "checkpoints"))) == ["2", "4"]
    restored, _ = _final_params(config, workdir)
    assert int(restored.step) == 4
    leaves = jax.tree_util.tree_leaves(jax.device_get(restored.params))
    assert all(np.all(np.isfinite(leaf)) for leaf in leaves)


@pytest.mark.slow
def test_training_input_that_ends_early_is_an_error(tmp_path):
    config = small_config()
    short = _AlteredTrainInput(config, lambda index, batch: batch if index < 3 else None)
    with pytest.raises(RuntimeError, match="ended after step 3, before its 6 steps"):
        train_lib.train_and_evaluate(config, str(tmp_path / "short"), pipeline=short)


# ----------------------------------------------------------------------------- workdir guards


def _fail_if_set_up(*args, **kwargs):
    raise AssertionError("the run was set up (and would compile) before the guard refused it")


def _copy_workdir(source, tmp_path):
    target = str(tmp_path / "copy")
    shutil.copytree(source, target)
    return target


@pytest.mark.parametrize(
    "overrides,diff",
    [
        ({"optimizer.learning_rate": 1e-3}, "optimizer.learning_rate: 0.0001 -> 0.001"),
        ({"model.eca_in": "encoder"}, "model.eca_in: 'encoder,bottleneck,decoder' -> 'encoder'"),
    ],
)
@pytest.mark.slow
def test_resuming_with_another_config_is_refused_before_set_up(
    uninterrupted, tmp_path, monkeypatch, overrides, diff
):
    config, reference_dir, _ = uninterrupted
    workdir = _copy_workdir(reference_dir, tmp_path)
    saved = read_text(workdir, "config.json")
    monkeypatch.setattr(loop, "setup_run", _fail_if_set_up)
    changed = apply_overrides(resumable_config(), overrides, "test")
    with pytest.raises(workdir_lib.ConfigChangedError, match="latest step 12") as raised:
        train_lib.train_and_evaluate(changed, workdir)
    assert diff in str(raised.value)
    assert read_text(workdir, "config.json") == saved


@pytest.mark.slow
def test_allowed_config_change_resumes_and_is_recorded_with_its_step(uninterrupted, tmp_path):
    config, reference_dir, _ = uninterrupted
    workdir = _copy_workdir(reference_dir, tmp_path)
    changed = resumable_config()
    changed.optimizer.learning_rate = 1e-3
    # The run is finished: only the final evaluation runs again, now under the new config.
    (trained,) = train_lib.train_and_evaluate(changed, workdir, allow_config_change=True)
    result = trained.metrics
    assert result["step"] == json.loads(read_text(reference_dir, "eval_validation.json"))["step"]
    history = workdir_lib.read_config_history(workdir)
    assert [(row["step"], row["changed"]) for row in history] == [
        (0, []),
        (12, ["optimizer.learning_rate"]),
    ]
    assert json.loads(read_text(workdir, "config.json"))["optimizer"]["learning_rate"] == 1e-3


@pytest.mark.slow
def test_raising_num_epochs_extends_a_run_with_the_schedule_rebuilt(tmp_path, caplog):
    """A finished cosine run is extended: the rate jumps from 0 back up to the new curve's value."""
    config = small_config(**{"optimizer.schedule": "cosine"})
    workdir = str(tmp_path / "extended")
    mesh = sharding.make_mesh(jax.devices()[:1])
    train_lib.train_and_evaluate(config, workdir, mesh=mesh)
    first, _ = _final_params(config, workdir)
    config.num_epochs = 2
    with caplog.at_level("WARNING"):
        train_lib.train_and_evaluate(config, workdir, mesh=mesh)
    lr = config.optimizer.learning_rate
    # cosine over 12 steps at step 6: lr * (1 + cos(pi / 2)) / 2.
    jump = f"at the resume step 6 the rate goes from 0 (old schedule) to {lr / 2:.4g}"
    assert jump in caplog.text
    extended, meta = _final_params(config, workdir)
    assert int(extended.step) == 12 and [row["epoch"] for row in meta["history"]] == [1, 2]
    # Under the old schedule (rate 0 after step 6) epoch 2 would not move the parameters.
    before, after = jax.device_get(first.params), jax.device_get(extended.params)
    moved = jax.tree_util.tree_map(lambda a, b: bool(np.any(a != b)), before, after)
    assert all(jax.tree_util.tree_leaves(moved))
    history = workdir_lib.read_config_history(workdir)
    assert [(row["step"], row["changed"]) for row in history] == [(0, []), (6, ["num_epochs"])]


def test_second_run_on_a_workdir_in_use_stops_before_set_up(tmp_path, monkeypatch):
    monkeypatch.setattr(loop, "setup_run", _fail_if_set_up)
    locked = pytest.raises(workdir_lib.WorkdirLockedError, match=f"process {os.getpid()} on host")
    with workdir_lib.WorkdirLock(tmp_path), locked:
        train_lib.train_and_evaluate(tiny_config(), str(tmp_path))


def test_unwritable_workdir_fails_before_set_up_naming_the_path(tmp_path, monkeypatch):
    monkeypatch.setattr(loop, "setup_run", _fail_if_set_up)
    (tmp_path / "file").write_text("")
    with pytest.raises(workdir_lib.WorkdirNotWritableError, match=f"{tmp_path}/file is a file"):
        train_lib.train_and_evaluate(tiny_config(), str(tmp_path / "file" / "run"))


def _rows_without_throughput(workdir):
    rows = [json.loads(line) for line in read_text(workdir, "metrics.jsonl").splitlines()]
    return workdir_lib.without_measured(rows)


def _json_files(workdir):
    for root, _, names in os.walk(workdir):
        for name in names:
            path = os.path.join(root, name)
            # A save's meta (history, best mIoU) is JSON in <step>/meta/metadata.
            if name.endswith((".json", ".jsonl")) or (
                os.path.basename(root) == "meta" and name == "metadata"
            ):
                yield path


@pytest.mark.slow
def test_every_json_file_of_a_run_is_strict_json(uninterrupted):
    _, workdir, _ = uninterrupted
    checked = []
    for path in _json_files(workdir):
        with open(path) as f:
            text = f.read()
        lines = text.splitlines() if path.endswith(".jsonl") else [text]
        for line in lines:
            json.loads(line, parse_constant=lambda c, p=path: pytest.fail(f"{c} in {p}"))
        checked.append(os.path.relpath(path, workdir))
    for name in ("config.json", "config_history.jsonl", "data_split.json", "metrics.jsonl"):
        assert name in checked
    assert any(path.startswith("checkpoints/12/meta") for path in checked), checked


# ----------------------------------------------------------------------------- kill safety


def _kill_worker(workdir, point):
    done = subprocess.run(
        [sys.executable, os.path.join(REPO, "tests", "kill_worker.py"), workdir, point],
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": REPO, "JAX_PLATFORMS": "cpu"},
        capture_output=True,
        text=True,
        timeout=400,
    )
    return done


def _temporary_saves(workdir):
    return [
        name
        for folder in ("checkpoints", "best")
        if os.path.isdir(os.path.join(workdir, folder))
        for name in os.listdir(os.path.join(workdir, folder))
        if "orbax-checkpoint-tmp" in name
    ]


@pytest.mark.slow
def test_killed_at_any_moment_the_resumed_run_ends_like_the_uninterrupted_one(
    uninterrupted, tmp_path
):
    config, reference_dir, _ = uninterrupted
    workdir = str(tmp_path / "killed")
    # Each run is killed with SIGKILL at its point, then the next one resumes the workdir.
    for point in ("step:4", "checkpoint:8", "eval:1", "figures"):
        done = _kill_worker(workdir, point)
        assert done.returncode == -signal.SIGKILL, (point, done.stderr[-3000:])
        if point == "checkpoint:8":
            assert "tmp folder seen: True" in done.stdout
            assert "8.orbax-checkpoint-tmp" in _temporary_saves(workdir)
        else:
            # The next run deleted the killed save's temporary folder instead of restoring it.
            assert "8.orbax-checkpoint-tmp" not in _temporary_saves(workdir)
    # The last resume runs to the end here, in this process: the same 8 devices and config as the
    # worker's, without another interpreter start.
    train_lib.train_and_evaluate(config, workdir)
    assert _temporary_saves(workdir) == []

    resumed, resumed_meta = _final_params(config, workdir)
    reference, reference_meta = _final_params(config, reference_dir)
    for part in ("params", "batch_stats", "opt_state"):
        chex.assert_trees_all_equal(
            jax.device_get(getattr(resumed, part)), jax.device_get(getattr(reference, part))
        )
    assert sorted(os.listdir(os.path.join(workdir, "best"))) == sorted(
        os.listdir(os.path.join(reference_dir, "best"))
    )
    for name in ("eval_validation.json", "per_image_validation.csv"):
        assert read_text(workdir, name) == read_text(reference_dir, name), name

    def replayable(history):
        # Train loss and speed are over the steps each process ran; the rest must be identical.
        keys = ("epoch", "step", "learning_rate", "val_miou")
        return [{k: row[k] for k in keys} for row in history]

    assert replayable(resumed_meta["history"]) == replayable(reference_meta["history"])
    # Killed mid-epoch (step 4 of 6) and resumed: every epoch's train_loss is the uninterrupted
    # run's too, since a save carries the losses of its epoch so far.
    assert _rows_without_throughput(workdir) == _rows_without_throughput(reference_dir)
    assert sorted(os.listdir(os.path.join(workdir, "predictions"))) == sorted(
        os.listdir(os.path.join(reference_dir, "predictions"))
    )


@pytest.mark.slow
def test_run_summary_says_where_everything_is_and_what_to_run_next(uninterrupted):
    _, workdir, result = uninterrupted
    text = train_lib.run_summary(workdir, result)
    assert f"Validation (best checkpoint, step {result['step']}): miou {result['miou']:.4f}" in text
    assert "Test (" not in text  # the tiny config has no test block
    assert f"python predict.py --workdir {os.path.abspath(workdir)} --inputs" in text
    assert f"python evaluate.py --workdir {os.path.abspath(workdir)}" in text
    assert "tensorboard --logdir" in text and "predictions/" in text
