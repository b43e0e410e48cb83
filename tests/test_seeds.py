"""config.num_seeds = K: K seeds in one program, each equal to its single run and its own workdir.

Equality with single runs is up to float rounding, not bit-exact: `jax.vmap` turns each seed's
convolutions into one grouped convolution, whose float32 sums XLA orders differently (gradients
differ by ~1e-5 of their largest entry). Adam divides each gradient by its own running RMS, so for
near-zero gradient entries that rounding becomes a few percent of one update (the learning rate,
1e-4): parameters are compared with ``atol=1e-5`` (a tenth of one update) and ``rtol=1e-4``, the
tolerance of test_train's 8-devices-vs-1 check. A wrong initialisation or data order is off by a
whole update or more and fails. A resumed K-seed run runs the very same program as an
uninterrupted one and must match it exactly. The 2-seed run averages its weights
(``config.ema_decay``), so the same checks cover the average: stacked, saved per seed, resumed
exactly, and evaluated.
"""

import json
import os
import shutil

import chex
import jax
import numpy as np
import pytest
from helpers import SMALL_MODEL_FLAGS, read_text, run_train_py, small_config, tiny_config

from bts_jax import config_tools, sharding
from bts_jax import data as data_lib
from bts_jax import train as train_lib
from bts_jax import workdir as workdir_lib
from bts_jax.train import seeds, steps
from bts_jax.train import state as state_lib
from bts_jax.train.config_checks import validate_config

NUM_STEPS = 3
TOLERANCE = {"rtol": 1e-4, "atol": 1e-5}


def first_batches(config, n):
    batches = data_lib.make_dataset(config, "train", process_index=0, process_count=1)
    return [batch for batch, _ in zip(batches, range(n), strict=False)]


# ----------------------------------------------------------------------------- mesh and configs


@pytest.mark.parametrize(
    "num_seeds,devices,shape", [(1, 8, (1, 8)), (2, 8, (2, 4)), (3, 8, (1, 8)), (4, 2, (2, 1))]
)
def test_seed_mesh_puts_the_largest_common_divisor_on_the_seed_axis(num_seeds, devices, shape):
    mesh = sharding.make_seed_mesh(num_seeds, jax.devices()[:devices])
    assert mesh.axis_names == ("seed", "data")
    assert mesh.devices.shape == shape
    assert sharding.seed_axis_size(num_seeds, devices) == shape[0]
    flat = sharding.flat_mesh(mesh)
    assert flat.axis_names == ("data",)
    assert list(flat.devices) == list(jax.devices()[:devices])


def test_seed_configs_are_the_single_runs_configs():
    config = tiny_config(seed=5, num_seeds=3)
    configs = train_lib.seed_configs(config)
    assert [c.seed for c in configs] == [5, 6, 7]
    assert all(c.num_seeds == 1 for c in configs)
    assert config.seed == 5 and config.num_seeds == 3  # the run's own config is untouched
    single = tiny_config(seed=6)
    assert (
        workdir_lib.diff_configs(
            config_tools.flatten_config(single), config_tools.flatten_config(configs[1])
        )
        == []
    )
    one = tiny_config()
    assert train_lib.seed_configs(one) == [one]
    assert workdir_lib.seed_workdir("/runs/x", 6) == "/runs/x/seed_6"


@pytest.mark.parametrize(
    "overrides,device_count,process_count,message",
    [
        (
            {"num_seeds": 2, "batch_size": 6},
            8,
            1,
            r"config\.batch_size=6 \(each seed's batch\) must be a positive multiple of the 4 "
            r"data-parallel devices of each seed: with config\.num_seeds=2 on 8 devices",
        ),
        ({"num_seeds": 3, "batch_size": 4}, 8, 1, r"config\.batch_size=4 .* config\.num_seeds=3"),
        ({"num_seeds": 0}, 1, 1, r"config\.num_seeds=0 must be an integer >= 1"),
        ({"num_seeds": 2}, 8, 2, r"config\.num_seeds=2 trains on one host only"),
        (
            {"num_seeds": 2, "checkpoint.max_to_keep": 1},
            8,
            1,
            r"config\.checkpoint\.max_to_keep=1 must be >= 2 with config\.num_seeds=2",
        ),
    ],
)
def test_bad_seed_settings_are_named(overrides, device_count, process_count, message):
    with pytest.raises(ValueError, match=message):
        validate_config(
            tiny_config(**overrides), device_count=device_count, process_count=process_count
        )


def test_each_seeds_batch_only_has_to_fill_the_data_axis():
    # 2 seeds on 8 devices: 4 data-parallel devices per seed, so a batch of 4 is fine.
    validate_config(tiny_config(num_seeds=2, batch_size=4), device_count=8, process_count=1)
    with pytest.raises(ValueError, match=r"config\.batch_size=4 must be a positive multiple"):
        validate_config(tiny_config(batch_size=4), device_count=8, process_count=1)


def test_workdirs_from_before_num_seeds_resume_unchanged(tmp_path):
    config = tiny_config()
    saved = json.loads(config.to_json_best_effort())
    del saved["num_seeds"]
    (tmp_path / "config.json").write_text(json.dumps(saved))
    assert workdir_lib.check_config(config, tmp_path, checkpoint_step=6) == []
    with pytest.raises(workdir_lib.ConfigChangedError, match="num_seeds: 1 -> 2"):
        workdir_lib.check_config(tiny_config(num_seeds=2), tmp_path, checkpoint_step=6)


# ----------------------------------------------------------------------------- the step


@pytest.mark.slow
def test_seed_states_initialise_exactly_like_single_runs_and_round_trip():
    config = small_config(seed=3, num_seeds=2)
    mesh = sharding.make_seed_mesh(2)
    run = train_lib.setup_run(config, mesh)
    stacked = state_lib.create_seed_train_states(config, run.model, run.optimizer, mesh)
    assert stacked.params["head"]["kernel"].sharding.spec == jax.sharding.PartitionSpec("seed")
    seeds = state_lib.unstack_train_state(stacked, run.eval_mesh)
    for single, seed_state in zip(train_lib.seed_configs(config), seeds, strict=True):
        expected = state_lib.create_train_state(single, run.model, run.optimizer, run.eval_mesh)
        chex.assert_trees_all_equal(jax.device_get(seed_state), jax.device_get(expected))
        assert seed_state.params["head"]["kernel"].sharding.is_fully_replicated
    restacked = state_lib.stack_train_states(seeds, mesh)
    chex.assert_trees_all_equal(jax.device_get(restacked), jax.device_get(stacked))
    assert restacked.params["head"]["kernel"].sharding == stacked.params["head"]["kernel"].sharding
    # Stacking reads each leaf whole on the host: a sharded leaf is refused, not half-read.
    with pytest.raises(ValueError, match="takes replicated states"):
        state_lib.stack_train_states([stacked, stacked], mesh)


def _single_run_params(config, mesh):
    run = train_lib.setup_run(config, mesh)
    state = state_lib.create_train_state(config, run.model, run.optimizer, mesh)
    losses = []
    for batch in first_batches(config, NUM_STEPS):
        state, step_metrics = run.train_fn(state, sharding.make_global_batch(batch, mesh))
        losses.append(float(step_metrics["loss"]))
    return jax.device_get(state.params), jax.device_get(state.batch_stats), losses


# Two seeds on 8 devices (a 2x4 mesh) are the whole run of `two_seed_run`, checked against its
# single run in `test_each_seed_is_a_complete_workdir_of_its_own_single_run`.
@pytest.mark.parametrize(
    "num_seeds,num_devices", [(2, 1), (3, 8)], ids=["2seeds-1dev", "3seeds-1x8"]
)
@pytest.mark.slow
def test_seed_k_of_a_k_seed_step_ends_like_the_single_run_of_its_seed(num_seeds, num_devices):
    devices = jax.devices()[:num_devices]
    # CPU's default depthwise formulation (configs/test.py sets "grouped"): its custom gradient,
    # vmapped over the seeds, must end like the single runs too.
    config = small_config(seed=1, num_seeds=num_seeds, **{"model.depthwise_impl": "auto"})
    run = train_lib.setup_run(config, sharding.make_mesh(devices))
    assert run.mesh.devices.shape == (
        sharding.seed_axis_size(num_seeds, num_devices),
        num_devices // sharding.seed_axis_size(num_seeds, num_devices),
    )
    state = state_lib.create_seed_train_states(config, run.model, run.optimizer, run.mesh)
    singles = train_lib.seed_configs(config)
    per_seed = [first_batches(single, NUM_STEPS) for single in singles]
    losses = []
    for step in range(NUM_STEPS):
        batch = sharding.make_seed_batch([batches[step] for batches in per_seed], run.mesh)
        state, step_metrics = run.train_fn(state, batch)
        assert step_metrics["loss"].shape == (num_seeds,)
        losses.append(jax.device_get(step_metrics["loss"]))
    seed_states = state_lib.unstack_train_state(state, run.eval_mesh)
    for k, single in enumerate(singles):
        params, batch_stats, single_losses = _single_run_params(single, sharding.make_mesh(devices))
        np.testing.assert_allclose([loss[k] for loss in losses], single_losses, rtol=1e-5)
        chex.assert_trees_all_close(jax.device_get(seed_states[k].params), params, **TOLERANCE)
        chex.assert_trees_all_close(
            jax.device_get(seed_states[k].batch_stats), batch_stats, atol=1e-5
        )
    # The seeds really differ: seed 0's parameters are not seed 1's.
    other = jax.device_get(seed_states[1].params)["head"]["kernel"]
    assert np.abs(jax.device_get(seed_states[0].params)["head"]["kernel"] - other).max() > 1e-2


# ----------------------------------------------------------------------------- whole runs


class _CrashingInput(data_lib.InputPipeline):
    """The real input of one seed, dying at its ``crash_at``-th training batch (1-based)."""

    def __init__(self, config, crash_at):
        super().__init__(config, process_index=0, process_count=1)
        self.crash_at = crash_at

    def train_batches(self, *, start_step=0):
        for index, batch in enumerate(super().train_batches(start_step=start_step)):
            if index + 1 == self.crash_at:
                raise RuntimeError("simulated crash")
            yield batch


def _latest_params(config, workdir):
    run = train_lib.setup_run(config)
    target = state_lib.abstract_train_state(config, run.model, run.optimizer, run.eval_mesh)
    return workdir_lib.restore_train_state(workdir, target, "latest")


# Averaging from step 2 on: the resumed seed 5 restarts from the save of step 2, at the start.
EMA_OVERRIDES = {"ema_decay": 0.9, "ema_start_step": 2}
RUN_OVERRIDES = {"seed": 4, "num_seeds": 2, "checkpoint.every_steps": 2, **EMA_OVERRIDES}


@pytest.fixture(scope="module")
def two_seed_run(tmp_path_factory):
    """An uninterrupted 2-seed run (seeds 4, 5) on the 8 fake devices, compiling its step once."""
    config = small_config(**RUN_OVERRIDES)
    workdir = str(tmp_path_factory.mktemp("two_seeds"))
    traced = chex.assert_max_traces(steps.train_step, n=1)
    original = steps.train_step
    steps.train_step = traced
    try:
        trained = train_lib.train_and_evaluate(config, workdir, show_progress=False)
        results = [r.metrics for r in trained]
        assert [(r.seed, r.workdir) for r in trained] == [
            (s, os.path.join(os.path.abspath(workdir), f"seed_{s}"))
            for s in range(config.seed, config.seed + config.num_seeds)
        ]
    finally:
        steps.train_step = original
    return config, workdir, results


@pytest.mark.slow
def test_each_seed_is_a_complete_workdir_of_its_own_single_run(two_seed_run, tmp_path):
    config, workdir, results = two_seed_run
    assert sorted(os.listdir(workdir)) == [".lock", "seed_4", "seed_5"]
    assert train_lib.setup_run(config).mesh.devices.shape == (2, 4)  # seeds x data
    single_config = small_config(seed=5, **{"checkpoint.every_steps": 2, **EMA_OVERRIDES})
    single_dir = str(tmp_path / "single_seed_5")
    (single,) = train_lib.train_and_evaluate(single_config, single_dir, show_progress=False)
    single_result = single.metrics

    seed_dir = os.path.join(workdir, "seed_5")
    assert sorted(os.listdir(seed_dir)) == sorted(os.listdir(single_dir))
    assert read_text(seed_dir, "config.json") == read_text(single_dir, "config.json")
    assert read_text(seed_dir, "data_split.json") == read_text(single_dir, "data_split.json")
    assert os.listdir(os.path.join(seed_dir, "checkpoints")) == os.listdir(
        os.path.join(single_dir, "checkpoints")
    )
    rows = [json.loads(line) for line in read_text(seed_dir, "metrics.jsonl").splitlines()]
    single_rows = [json.loads(line) for line in read_text(single_dir, "metrics.jsonl").splitlines()]
    assert [sorted(row) for row in rows] == [sorted(row) for row in single_rows]
    assert rows[0]["train_loss"] == pytest.approx(single_rows[0]["train_loss"], rel=1e-5)
    assert results[1]["step"] == single_result["step"]
    assert results[1]["loss"] == pytest.approx(single_result["loss"], rel=1e-4)
    seed_state = jax.device_get(_latest_params(single_config, seed_dir))
    single_state = jax.device_get(_latest_params(single_config, single_dir))
    chex.assert_trees_all_close(seed_state.params, single_state.params, **TOLERANCE)
    chex.assert_trees_all_close(seed_state.batch_stats, single_state.batch_stats, atol=1e-5)
    # The seeds really differ: seed 4's parameters are not seed 5's.
    other = jax.device_get(_latest_params(single_config, os.path.join(workdir, "seed_4")))
    assert np.abs(seed_state.params["head"]["kernel"] - other.params["head"]["kernel"]).max() > 1e-2
    chex.assert_trees_all_close(seed_state.ema, single_state.ema, **TOLERANCE)
    # Each seed's workdir is read like any other; the multi-seed folder points to them. Its
    # model is the average of its weights, as its validation was.
    loaded, _, variables = workdir_lib.load_trained_model(seed_dir, "latest")
    assert loaded.seed == 5 and loaded.num_seeds == 1 and "params" in variables
    chex.assert_trees_all_equal(jax.device_get(variables), seed_state.ema)
    with pytest.raises(FileNotFoundError, match="one workdir per seed.*seed_4"):
        workdir_lib.load_config(workdir)


@pytest.mark.slow
def test_a_killed_k_seed_run_resumes_every_seed_exactly(two_seed_run, tmp_path):
    config, reference_dir, _ = two_seed_run
    workdir = str(tmp_path / "resumed")
    # 6 steps per epoch, saves every 2: the crash at batch 6 comes after the save of step 4.
    crashing = [_CrashingInput(single, 6) for single in train_lib.seed_configs(config)]
    with pytest.raises(RuntimeError, match="simulated crash"):
        train_lib.train_and_evaluate(config, workdir, pipeline=crashing, show_progress=False)
    for seed in (4, 5):
        saves = os.listdir(os.path.join(workdir, f"seed_{seed}", "checkpoints"))
        assert sorted(saves) == ["2", "4"]
    # As if killed between the seeds' saves of step 4: seed 5 last saved step 2.
    shutil.rmtree(os.path.join(workdir, "seed_5", "checkpoints", "4"))
    results = [
        r.metrics for r in train_lib.train_and_evaluate(config, workdir, show_progress=False)
    ]

    assert [r["step"] for r in results] == [
        json.loads(read_text(reference_dir, f"seed_{s}", "eval_validation.json"))["step"]
        for s in (4, 5)
    ]
    for single in train_lib.seed_configs(config):
        name = f"seed_{single.seed}"
        resumed = _latest_params(single, os.path.join(workdir, name))
        reference = _latest_params(single, os.path.join(reference_dir, name))
        assert int(resumed.step) == int(reference.step) == 6
        # The whole state, the weights' average included.
        assert type(resumed) is state_lib.EmaTrainState
        chex.assert_trees_all_equal(jax.device_get(resumed), jax.device_get(reference))
        resumed_rows, reference_rows = (
            [_without_timing(line) for line in read_text(d, name, "metrics.jsonl").splitlines()]
            for d in (workdir, reference_dir)
        )
        assert resumed_rows == reference_rows and len(resumed_rows) == 1


def _without_timing(line):
    # Throughput and seconds are measured; everything else, the resumed epoch's train_loss
    # included (the save carries the epoch's losses so far), must be equal.
    (row,) = workdir_lib.without_measured([json.loads(line)])
    return row


def test_seeds_that_cannot_resume_together_are_refused(tmp_path):
    config = tiny_config(num_seeds=2)
    workdirs = [str(tmp_path / "seed_0"), str(tmp_path / "seed_1")]
    with pytest.raises(RuntimeError, match="Some seeds .* have checkpoints and others have none"):
        seeds.common_step(workdirs, [4, None])
    assert seeds.common_step(workdirs, [4, 2]) == 2
    assert seeds.common_step(workdirs, [None, None]) is None
    assert train_lib.num_seeds_of(config) == 2


@pytest.mark.slow
def test_train_py_trains_k_seeds_and_summarises_each(tmp_path):
    workdir = tmp_path / "cli"
    done = run_train_py(
        f"--workdir={workdir}", "--config.seed=3", "--config.num_seeds=2", *SMALL_MODEL_FLAGS
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "Seed 3:" in done.stdout and "Seed 4:" in done.stdout
    assert done.stdout.count("Validation (best checkpoint, step 6)") == 2
    for seed in (3, 4):
        assert (workdir / f"seed_{seed}" / "eval_validation.json").is_file()
        assert f"--workdir {workdir / f'seed_{seed}'}" in done.stdout
