"""benchmarks/quality_vs_compute.py, and the saves it scores: every epoch kept, each by its step."""

import json
import os
import sys

import jax
import numpy as np
import pytest
from helpers import defined_flags, small_config

from bts_jax import sharding
from bts_jax import train as train_lib
from bts_jax import workdir as workdir_lib

SHARED = os.path.join(
    os.path.dirname(__file__), "..", "..", "shared", "data", "figshare_brain_tumor"
)
needs_shared = pytest.mark.skipif(
    not os.path.isdir(SHARED), reason="shared figshare folder not present"
)


@pytest.fixture(scope="module")
def every_epoch_kept(tmp_path_factory) -> str:
    """4 epochs of the two-stage 16 px model with ``checkpoint.max_to_keep=0``: 4 saves kept."""
    workdir = str(tmp_path_factory.mktemp("curve") / "run")
    config = small_config(num_epochs=4, **{"checkpoint.max_to_keep": 0})
    train_lib.train_and_evaluate(config, workdir, mesh=sharding.make_mesh(jax.devices()[:1]))
    return workdir


@pytest.fixture
def curve_script():
    # The script defines its flags on import: imported fresh, and they are removed after.
    sys.modules.pop("quality_vs_compute", None)
    with defined_flags() as flags:
        import quality_vs_compute

        yield quality_vs_compute, flags


@pytest.mark.slow
def test_max_to_keep_0_keeps_every_save_and_each_restores_by_its_step(every_epoch_kept):
    # 6 steps an epoch; Orbax's default of 3 would keep only the last three.
    assert workdir_lib.saved_steps(every_epoch_kept) == [6, 12, 18, 24]
    _, _, first = workdir_lib.load_trained_model(every_epoch_kept, "step:6")
    _, _, last = workdir_lib.load_trained_model(every_epoch_kept, "step:24")
    _, _, latest = workdir_lib.load_trained_model(every_epoch_kept, "latest")
    leaves = [jax.tree_util.tree_leaves(v["params"]) for v in (first, last, latest)]
    assert all(np.array_equal(a, b) for a, b in zip(leaves[1], leaves[2], strict=True))
    assert not all(np.array_equal(a, b) for a, b in zip(leaves[0], leaves[1], strict=True))
    with pytest.raises(
        FileNotFoundError, match=r"No save of step 7 .*kept steps: \[6, 12, 18, 24\]"
    ):
        workdir_lib.resolve_checkpoint(every_epoch_kept, "step:7")
    rows = workdir_lib.read_metrics(every_epoch_kept)
    assert [row["step"] for row in rows] == [6, 12, 18, 24]
    assert all(a["wall_s"] < b["wall_s"] for a, b in zip(rows[:-1], rows[1:], strict=True))


def test_which_names_best_latest_or_a_step(tmp_path):
    for which in ("best", "latest", "step:0", "step:1536"):
        assert workdir_lib.check_which(which) == which
    for which in ("last", "step:", "step:-1", "step:1.5", "1536"):
        with pytest.raises(ValueError, match="'step:N'"):
            workdir_lib.check_which(which)
    assert workdir_lib.saved_steps(tmp_path) == []


def test_run_points_refuses_runs_it_cannot_place(trained_workdir_copy, curve_script):
    script, _ = curve_script
    (point,) = script.run_points(trained_workdir_copy)
    assert (point["step"], point["epoch"]) == (6, 1) and point["minutes"] > 0
    path = os.path.join(trained_workdir_copy, "metrics.jsonl")
    rows = workdir_lib.read_metrics(trained_workdir_copy)
    with open(path, "w") as f:
        f.writelines(
            json.dumps({k: v for k, v in row.items() if k != "wall_s"}) + "\n" for row in rows
        )
    with pytest.raises(ValueError, match=r"no wall_s at step\(s\) \[6\]"):
        script.run_points(trained_workdir_copy)
    with open(path, "w") as f:
        f.write("")
    with pytest.raises(ValueError, match="keeps no save at an epoch's end"):
        script.run_points(trained_workdir_copy)


@pytest.mark.slow
@needs_shared
def test_script_scores_every_save_once_and_draws_the_curve(
    every_epoch_kept, curve_script, tmp_path, capsys, monkeypatch
):
    script, flags = curve_script
    output, plot = tmp_path / "points.json", tmp_path / "curve.png"
    argv = [
        "quality_vs_compute.py",
        f"--workdir={every_epoch_kept}",
        f"--data_dir={SHARED}",
        "--max_images=3",
        "--batch_size=2",
        f"--output={output}",
        f"--plot={plot}",
    ]
    flags(argv)
    script.main([])
    printed = capsys.readouterr().out
    assert "held-out slices: 3" in printed
    points = json.loads(output.read_text())["points"]
    assert [p["step"] for p in points] == [6, 12, 18, 24]
    assert [p["epoch"] for p in points] == [1, 2, 3, 4]
    assert all(0 <= p["heldout_dice"] <= 1 and 0 <= p["heldout_empty"] <= 3 for p in points)
    minutes = [p["minutes"] for p in points]
    assert minutes == sorted(minutes) and minutes[0] > 0
    assert plot.stat().st_size > 0 and printed.count(" | ") >= 4 * 5

    # Run again: every point is kept, none scored again.
    def no_scoring(*args, **kwargs):
        raise AssertionError("scored a kept point again")

    monkeypatch.setattr(script, "score_point", no_scoring)
    script.main([])
    assert json.loads(output.read_text())["points"] == points

    # Other held-out images are refused, named.
    flags.unparse_flags()
    flags([*argv[:3], "--max_images=2", *argv[4:]])
    with pytest.raises(SystemExit, match="other held-out images"):
        script.main([])
