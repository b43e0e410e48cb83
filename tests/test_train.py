"""Training tests on the tiny config: sharding, no recompiles, resume, NaN stop, multi-host, CLI."""

import itertools
import json
import os
import socket
import subprocess
import sys

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from bts_jax import data as data_lib
from bts_jax import train_lib
from configs import test as test_config

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def tiny_config(**overrides):
    config = test_config.get_config()
    for key, value in overrides.items():
        target = config
        *path, leaf = key.split(".")
        for part in path:
            target = target[part]
        target[leaf] = value
    return config


def read_text(*path):
    with open(os.path.join(*path)) as f:
        return f.read()


def params_of(state):
    return jax.device_get(state.params)


def first_batches(config, n, **kwargs):
    batches = []
    for batch in data_lib.make_dataset(config, "train", **kwargs):
        batches.append(batch)
        if len(batches) == n:
            break
    return batches


# ----------------------------------------------------------------------------- config errors


@pytest.mark.parametrize(
    "overrides,message",
    [
        ({"batch_size": 4}, r"config.batch_size=4 must be a positive multiple of the number of"),
        ({"eval_batch_size": 12}, r"config.eval_batch_size=12"),
        ({"optimizer.name": "sgd"}, r"config.optimizer.name='sgd'"),
        ({"optimizer.schedule": "step"}, r"config.optimizer.schedule='step'"),
        ({"dtype": "float16"}, r"config.dtype='float16'"),
        ({"data.image_size": 40}, r"config.data.image_size=40 must be a multiple of 16"),
        ({"num_epochs": 0}, r"config.num_epochs=0"),
        ({"model.eca_in": "encoder,attention"}, r"config.model.eca_in has unknown entries"),
    ],
)
def test_setup_run_rejects_bad_configs_naming_the_setting(overrides, message):
    with pytest.raises(ValueError, match=message):
        train_lib.setup_run(tiny_config(**overrides))


def test_learning_rate_schedules():
    config = tiny_config(**{"optimizer.warmup_epochs": 1.0, "optimizer.learning_rate": 1e-3})
    constant = train_lib.create_learning_rate_schedule(config.optimizer, 10, 100)
    assert float(constant(0)) == 0.0
    assert float(constant(5)) == pytest.approx(5e-4)
    assert float(constant(50)) == pytest.approx(1e-3)
    config.optimizer.schedule = "cosine"
    cosine = train_lib.create_learning_rate_schedule(config.optimizer, 10, 100)
    assert float(cosine(10)) == pytest.approx(1e-3)
    assert float(cosine(55)) == pytest.approx(5e-4, rel=1e-3)
    assert float(cosine(100)) == pytest.approx(0.0, abs=1e-9)


def test_gradient_clipping_bounds_the_update():
    config = tiny_config(**{"optimizer.name": "adamw", "optimizer.grad_clip_norm": 1e-3})
    config.optimizer.learning_rate = 1.0
    schedule = train_lib.create_learning_rate_schedule(config.optimizer, 1, 1)
    optimizer = train_lib.create_optimizer(config.optimizer, schedule)
    params = {"w": jnp.ones(3)}
    state = optimizer.init(params)
    clipped, _ = train_lib.optax.clip_by_global_norm(1e-3).update({"w": jnp.full(3, 100.0)}, None)
    assert float(jnp.linalg.norm(clipped["w"])) == pytest.approx(1e-3, rel=1e-4)
    updates, _ = optimizer.update({"w": jnp.full(3, 100.0)}, state, params)
    assert np.all(np.isfinite(updates["w"]))


# ----------------------------------------------------------------------------- sharded step


@pytest.fixture(scope="module")
def two_batches():
    config = tiny_config()
    return config, first_batches(config, 2)


def _run_steps(config, mesh, batches):
    run = train_lib.setup_run(config, mesh)
    state = train_lib.create_train_state(config, run.model, run.optimizer, mesh)
    for batch in batches:
        state, step_metrics = run.train_fn(state, train_lib.make_global_batch(batch, mesh))
    return state, jax.device_get(step_metrics)


def test_sharded_step_on_8_devices_equals_single_device_step(two_batches):
    config, batches = two_batches
    assert jax.device_count() == 8
    state8, metrics8 = _run_steps(config, train_lib.make_mesh(), batches)
    state1, metrics1 = _run_steps(config, train_lib.make_mesh(jax.devices()[:1]), batches)
    assert state8.params["head"]["kernel"].sharding.is_fully_replicated
    assert int(state8.step) == int(state1.step) == 2
    chex.assert_trees_all_close(params_of(state8), params_of(state1), rtol=1e-4, atol=2e-6)
    chex.assert_trees_all_close(
        jax.device_get(state8.batch_stats), jax.device_get(state1.batch_stats), atol=1e-5
    )
    assert metrics8["loss"] == pytest.approx(metrics1["loss"], rel=1e-5)


def test_bfloat16_compute_keeps_float32_state_and_loss(two_batches):
    _, batches = two_batches
    config = tiny_config(dtype="bfloat16")
    state, step_metrics = _run_steps(config, train_lib.make_mesh(), batches[:1])
    leaves = jax.tree_util.tree_leaves(
        jax.device_get((state.params, state.batch_stats, state.opt_state))
    )
    floating = {leaf.dtype for leaf in leaves if np.issubdtype(leaf.dtype, np.floating)}
    assert floating == {np.dtype(np.float32)}
    assert step_metrics["loss"].dtype == np.float32 and np.isfinite(step_metrics["loss"])


def test_batch_statistics_are_those_of_the_global_batch(two_batches):
    """With 8 devices and 1 image each, per-device BatchNorm would give other statistics."""
    config, batches = two_batches
    mesh = train_lib.make_mesh()
    run = train_lib.setup_run(config, mesh)
    state = train_lib.create_train_state(config, run.model, run.optimizer, mesh)
    variables = jax.device_get({"params": state.params, "batch_stats": state.batch_stats})
    # Reference: the model's own train-mode update on the whole batch at once, on one device.
    _, expected = jax.jit(lambda v, x: run.model.apply(v, x, train=True, mutable=["batch_stats"]))(
        variables, jnp.asarray(batches[0]["image"])
    )
    new_state, _ = run.train_fn(state, train_lib.make_global_batch(batches[0], mesh))
    chex.assert_trees_all_close(
        jax.device_get(new_state.batch_stats), jax.device_get(expected["batch_stats"]), atol=1e-5
    )


def test_eval_counts_every_image_once_with_padding(two_batches):
    config, _ = two_batches
    mesh = train_lib.make_mesh()
    run = train_lib.setup_run(config, mesh)
    state = train_lib.create_train_state(config, run.model, run.optimizer, mesh)
    result = train_lib.evaluate(
        run.eval_fn, state, data_lib.make_dataset(config, "validation"), mesh, num_classes=1
    )
    expected = len(data_lib.get_split_ids(config)["validation"])
    assert result["num_images"] == expected
    assert 0.0 <= result["miou"] <= 1.0 and np.isfinite(result["loss"])


# ----------------------------------------------------------------------------- full runs


def _interrupting_make_dataset(real, *, fail_at_train_batch):
    """Wraps make_dataset so the training input dies after a number of batches (a crash)."""
    count = {"n": 0}

    def make_dataset(config, split, **kwargs):
        for batch in real(config, split, **kwargs):
            if split == "train":
                count["n"] += 1
                if count["n"] == fail_at_train_batch:
                    raise RuntimeError("simulated crash")
            yield batch

    return make_dataset


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    """Two epochs of the tiny config, checkpointing every 2 steps, with no recompilation."""
    config = tiny_config(num_epochs=2, **{"checkpoint.every_steps": 2})
    workdir = str(tmp_path_factory.mktemp("uninterrupted"))
    traced = chex.assert_max_traces(train_lib.train_step, n=1)
    original = train_lib.train_step
    train_lib.train_step = traced
    try:
        result = train_lib.train_and_evaluate(config, workdir)
    finally:
        train_lib.train_step = original
    return config, workdir, result


def _final_params(config, workdir):
    run = train_lib.setup_run(config)
    target = train_lib.abstract_train_state(config, run.model, run.optimizer, run.mesh)
    latest, _ = train_lib.checkpoint_managers(workdir, config)
    restored, meta = train_lib.restore_checkpoint(latest, target)
    latest.close()
    return restored, meta


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


def test_killed_and_resumed_run_ends_with_the_same_parameters(uninterrupted, tmp_path, monkeypatch):
    config, reference_dir, _ = uninterrupted
    workdir = str(tmp_path / "resumed")
    real = data_lib.make_dataset
    # 6 steps per epoch: the crash comes at step 9, after the checkpoint of step 8.
    assert data_lib.steps_per_epoch(config) == 6
    monkeypatch.setattr(
        train_lib.data_lib, "make_dataset", _interrupting_make_dataset(real, fail_at_train_batch=9)
    )
    with pytest.raises(RuntimeError, match="simulated crash"):
        train_lib.train_and_evaluate(config, workdir)
    assert sorted(os.listdir(os.path.join(workdir, "checkpoints"))) == ["4", "6", "8"]
    monkeypatch.setattr(train_lib.data_lib, "make_dataset", real)
    train_lib.train_and_evaluate(config, workdir)

    resumed, resumed_meta = _final_params(config, workdir)
    reference, reference_meta = _final_params(config, reference_dir)
    assert int(resumed.step) == int(reference.step) == 12
    chex.assert_trees_all_equal(jax.device_get(resumed.params), jax.device_get(reference.params))
    chex.assert_trees_all_equal(
        jax.device_get(resumed.opt_state), jax.device_get(reference.opt_state)
    )
    assert [row["epoch"] for row in resumed_meta["history"]] == [1, 2]
    assert resumed_meta["history"][-1]["val_miou"] == reference_meta["history"][-1]["val_miou"]


def test_nan_loss_stops_the_run_and_keeps_the_last_good_checkpoint(tmp_path, monkeypatch):
    config = tiny_config(**{"checkpoint.every_steps": 2, "log_every_steps": 1})
    workdir = str(tmp_path / "nan")
    real = data_lib.make_dataset

    def poisoned(config, split, **kwargs):
        for i, batch in enumerate(real(config, split, **kwargs)):
            if split == "train" and i == 4:  # The 5th step sees a NaN image.
                batch = {**batch, "image": np.full_like(batch["image"], np.nan)}
            yield batch

    monkeypatch.setattr(train_lib.data_lib, "make_dataset", poisoned)
    with pytest.raises(train_lib.NonFiniteLossError, match=r"nan at step 5.*step 4\) is intact"):
        train_lib.train_and_evaluate(config, workdir)
    assert sorted(os.listdir(os.path.join(workdir, "checkpoints"))) == ["2", "4"]
    monkeypatch.setattr(train_lib.data_lib, "make_dataset", real)
    restored, _ = _final_params(config, workdir)
    assert int(restored.step) == 4
    leaves = jax.tree_util.tree_leaves(jax.device_get(restored.params))
    assert all(np.all(np.isfinite(leaf)) for leaf in leaves)


def test_training_input_that_ends_early_is_an_error(tmp_path, monkeypatch):
    real = data_lib.make_dataset

    def short(config, split, **kwargs):
        batches = real(config, split, **kwargs)
        return itertools.islice(batches, 3) if split == "train" else batches

    monkeypatch.setattr(train_lib.data_lib, "make_dataset", short)
    with pytest.raises(RuntimeError, match="ended after step 3, before its 6 steps"):
        train_lib.train_and_evaluate(tiny_config(), str(tmp_path / "short"))


# ----------------------------------------------------------------------------- multi-host


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_two_processes_train_like_one_process_on_the_same_global_batches(tmp_path):
    port = _free_port()
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "PYTHONPATH": REPO, "TF_CPP_MIN_LOG_LEVEL": "2"}
    worker = os.path.join(REPO, "tests", "multihost_worker.py")
    procs = [
        subprocess.Popen(
            [sys.executable, worker, str(port), str(i), str(tmp_path)],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for i in range(2)
    ]
    outputs = [p.communicate(timeout=400)[0] for p in procs]
    for p, out in zip(procs, outputs, strict=True):
        assert p.returncode == 0, out[-3000:]

    # Reference: one process, 4 devices, the global batches the two hosts made together.
    config = tiny_config()
    global_batches = []
    shards = [
        first_batches(config, 2, process_index=i, process_count=2, device_count=4) for i in range(2)
    ]
    for step in range(2):
        global_batches.append(
            {
                k: np.concatenate([shards[0][step][k], shards[1][step][k]])
                for k in ("image", "mask", "valid")
            }
        )
    mesh = train_lib.make_mesh(jax.devices()[:4])
    state, _ = _run_steps(config, mesh, global_batches)
    multi = dict(np.load(os.path.join(tmp_path, "params_0.npz")))
    flat = {
        "/".join(str(getattr(k, "key", k)) for k in path): np.asarray(leaf)
        for path, leaf in jax.tree_util.tree_leaves_with_path(params_of(state))
    }
    assert multi.keys() == flat.keys()
    for key in flat:
        np.testing.assert_allclose(multi[key], flat[key], rtol=1e-4, atol=2e-6, err_msg=key)
    # Both hosts hold the same replicated parameters.
    other = dict(np.load(os.path.join(tmp_path, "params_1.npz")))
    for key in flat:
        np.testing.assert_array_equal(multi[key], other[key])
    # Evaluation over two hosts counts every validation image once.
    evaluation = json.loads(read_text(tmp_path, "eval_0.json"))
    assert evaluation["num_images"] == len(data_lib.get_split_ids(config)["validation"])


# ----------------------------------------------------------------------------- command line


def test_train_py_end_to_end_and_flag_errors(tmp_path):
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "TF_CPP_MIN_LOG_LEVEL": "2"}
    workdir = tmp_path / "cli"
    done = subprocess.run(
        [
            sys.executable,
            "train.py",
            "--config",
            "configs/test.py",
            "--workdir",
            str(workdir),
            "--config.num_epochs=1",
        ],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "Validation (best checkpoint, step 6)" in done.stdout
    assert (workdir / "eval_validation.json").is_file() and (workdir / "best").is_dir()

    bad = subprocess.run(
        [
            sys.executable,
            "train.py",
            "--config",
            "configs/test.py",
            "--workdir",
            str(workdir),
            "--config.model.upsample=nearest",
        ],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert bad.returncode != 0
    assert "config.model.upsample='nearest'" in bad.stderr
    missing = subprocess.run(
        [sys.executable, "train.py", "--config", "configs/test.py"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert missing.returncode != 0 and "--workdir" in missing.stderr
