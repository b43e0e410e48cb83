"""A model without BatchNorm, its head at the "auto" prior, trains, evaluates, predicts, exports.

One epoch of ``configs/test.py`` with ``model.norm="group(4)"``: no running statistics anywhere
(TrainState, checkpoints, the eval step, predict, export), and the head's prior is recorded from
the training split.
"""

import jax
import numpy as np
import pytest
from helpers import small_config

from bts_jax import data as data_lib
from bts_jax import inference, sharding, train
from bts_jax import workdir as workdir_lib
from bts_jax.inference import export as export_lib
from bts_jax.train import state as state_lib


@pytest.mark.slow
def test_a_group_norm_run_with_an_auto_prior_trains_evaluates_predicts_and_exports(tmp_path):
    config = small_config(**{"model.norm": "group(4)", "model.output_bias_prior": "auto"})
    workdir = str(tmp_path / "run")
    mesh = sharding.make_mesh(jax.devices()[:1])
    (result,) = train.train_and_evaluate(config, workdir, mesh=mesh, show_progress=False)
    assert np.isfinite(result.metrics["loss"])

    # The prior of the training split, not of validation, is recorded.
    recorded = workdir_lib.read_environment(workdir)[-1]["output_bias_prior"]
    fraction = data_lib.tumour_pixel_fraction(config, "train")
    assert recorded["setting"] == "auto" and recorded["prior"] == fraction
    assert fraction != data_lib.tumour_pixel_fraction(config, "validation")
    np.testing.assert_allclose(recorded["bias"], [np.log(fraction / (1 - fraction))], rtol=1e-6)

    loaded_config, model, variables = workdir_lib.load_trained_model(workdir)
    assert model.norm == "group(4)"
    assert not jax.tree_util.tree_leaves(variables.get("batch_stats", {}))

    # The whole state restores (as a resume does), its batch_stats empty.
    run = train.setup_run(loaded_config, mesh)
    abstract = state_lib.abstract_train_state(loaded_config, run.model, run.optimizer, mesh)
    state = workdir_lib.restore_train_state(workdir, abstract, "latest")
    assert state.batch_stats == {} and int(state.step) == run.total_steps

    # Evaluating the workdir's best checkpoint again gives the run's final metrics.
    metrics = train.evaluate_checkpoint(loaded_config, workdir, "validation", run=run)
    assert metrics["miou"] == pytest.approx(result.metrics["miou"], abs=1e-6)

    image = np.random.default_rng(0).integers(0, 256, (40, 40), dtype=np.uint8)
    (mask,) = inference.predict_masks(model, variables, [image], loaded_config.data)
    assert mask.shape == (40, 40) and set(np.unique(mask)) <= {0, 1}
    exported = export_lib.export_probabilities([(model, variables)], 32, platforms=("cpu",))
    x = np.random.default_rng(1).random((2, 32, 32, 1), np.float32)
    direct = inference.ensemble_probabilities([(model, variables)], x, "none")
    np.testing.assert_allclose(exported.call(x), direct, atol=1e-6)
