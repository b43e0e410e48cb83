"""Training over two processes (jax.distributed on 127.0.0.1) and from the command line."""

import json
import os
import signal
import socket
import sys
import time

import jax
import numpy as np
import pytest
from helpers import (
    SMALL_MODEL_FLAGS,
    LoggedProcess,
    first_batches,
    params_of,
    read_text,
    run_steps,
    run_train_py,
    small_config,
)

from bts_jax import data as data_lib
from bts_jax import sharding

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


# ----------------------------------------------------------------------------- multi-host


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_compiled_together_compiles_once_and_is_the_step_itself_with_one_process():
    traces = []

    @jax.jit
    def step(x):
        traces.append(x.shape)
        return x * 2.0

    assert sharding.compiled_together(step, "step") is step  # one process: nothing to meet
    # Forced as with several processes: the barrier returns at once with one process.
    together = sharding.CompiledTogether(step, "step")
    x = np.arange(4.0, dtype=np.float32)
    np.testing.assert_array_equal(together(x), 2.0 * x)
    np.testing.assert_array_equal(together(x), 2.0 * x)
    # Compiled ahead for the barrier, then run: traced once, so compiled once.
    assert traces == [(4,)] and together.compiled
    assert together.barrier.startswith("bts_jax/step/compiled/")
    assert sharding.CompiledTogether(step, "step").barrier != together.barrier


@pytest.mark.slow
def test_two_processes_train_like_one_process_on_the_same_global_batches(tmp_path):
    port = _free_port()
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "PYTHONPATH": REPO, "TF_CPP_MIN_LOG_LEVEL": "2"}
    worker = os.path.join(REPO, "tests", "multihost_worker.py")
    procs = [
        LoggedProcess(
            [sys.executable, worker, str(port), str(i), str(tmp_path)],
            tmp_path / f"process_{i}.log",
            env=env,
        )
        for i in range(2)
    ]
    try:
        outputs = [p.output(timeout=400) for p in procs]
    finally:
        for p in procs:
            p.kill()
    for p, out in zip(procs, outputs, strict=True):
        assert p.returncode == 0, out[-3000:]

    # Reference: one process, 4 devices, the global batches the two hosts made together.
    config = small_config()
    global_batches = []
    shards = [first_batches(config, 2, process_index=i, process_count=2) for i in range(2)]
    for step in range(2):
        global_batches.append(
            {
                k: np.concatenate([shards[0][step][k], shards[1][step][k]])
                for k in ("image", "mask", "valid")
            }
        )
    mesh = sharding.make_mesh(jax.devices()[:4])
    state, _ = run_steps(config, mesh, global_batches)
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
    evaluated = json.loads(read_text(tmp_path, "eval_0.json"))
    validation_ids = data_lib.get_split_ids(config)["validation"]
    assert evaluated["num_images"] == len(validation_ids)
    # Each host scored its own images; after the gather both hold every image's row once.
    other_host = json.loads(read_text(tmp_path, "eval_1.json"))
    assert sorted(evaluated["per_image_ids"]) == sorted(validation_ids)
    assert other_host["per_image_ids"] == evaluated["per_image_ids"]


# ----------------------------------------------------------------------------- command line


@pytest.mark.slow
def test_train_py_end_to_end_and_flag_errors(tmp_path):
    workdir = tmp_path / "cli"
    done = run_train_py(f"--workdir={workdir}", "--config.num_epochs=1", *SMALL_MODEL_FLAGS)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "Validation (best checkpoint, step 6)" in done.stdout
    assert (workdir / "eval_validation.json").is_file() and (workdir / "best").is_dir()

    # A new workdir: in the trained one the config guard would refuse the change first.
    bad = run_train_py(f"--workdir={tmp_path / 'bad'}", "--config.model.upsample=nearest")
    assert bad.returncode != 0
    assert "config.model.upsample='nearest'" in bad.stderr
    missing = run_train_py(timeout=300)
    assert missing.returncode != 0 and "--workdir" in missing.stderr


@pytest.mark.slow
def test_a_lost_process_ends_the_other_with_an_error_naming_it(tmp_path):
    """Process 1 is killed after its first step; process 0 must not hang in the next collective."""
    port = _free_port()
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "PYTHONPATH": REPO, "TF_CPP_MIN_LOG_LEVEL": "2"}
    worker = os.path.join(REPO, "tests", "multihost_worker.py")
    procs = [
        LoggedProcess(
            [sys.executable, worker, str(port), str(i), str(tmp_path), "1"],
            tmp_path / f"process_{i}.log",
            env=env,
        )
        for i in range(2)
    ]
    try:
        lost = procs[1].output(timeout=400)
        assert procs[1].returncode == -signal.SIGKILL, lost[-3000:]
        died = time.monotonic()
        # The worker's heartbeat timeout is 15 s: well within a minute, even on a loaded machine.
        output = procs[0].output(timeout=120)
    finally:
        for p in procs:
            p.kill()
    assert time.monotonic() - died < 60
    assert procs[0].returncode != 0
    assert "The following tasks are unhealthy (stopped sending heartbeats):\n1\n" in output
