"""Every benchmark script runs as the README shows it, from the repository root, for a tiny step."""

import json
import os
import shutil
import subprocess
import sys

import pytest
from helpers import copy_workdir, defined_flags, read_text

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# helpers.SMALL_MODEL: the scripts' wiring is under test, so the smallest model that has them all.
SMALL = ["--config.model.features=(4, 8)", "--config.data.image_size=16"]
# The head's prior as the quickstart sets it: a script that builds its own train state must pass
# the training split's tumour fraction, as training does.
AUTO_PRIOR = "--config.model.output_bias_prior=auto"
COMMANDS = {
    "train_throughput": [
        "benchmarks/train_throughput.py",
        "--config",
        "configs/test.py",
        *SMALL,
        AUTO_PRIOR,
        "--steps=2",
        "--warmup=1",
    ],
    # No warm-up step at all: the timed steps follow the compilation directly.
    "train_throughput_no_warmup": [
        "benchmarks/train_throughput.py",
        "--config",
        "configs/test.py",
        *SMALL,
        "--steps=1",
        "--warmup=0",
    ],
    "model_stats": [
        "benchmarks/model_stats.py",
        "--image_size=32",
        "--configs=test",
        "--zoo_config=test",
    ],
    "seeds_throughput": [
        "benchmarks/seeds_throughput.py",
        "--config",
        "configs/test.py",
        "--config.model.features=(4, 8)",
        AUTO_PRIOR,
        "--image_size=16",
        "--num_seeds=1,2",
        "--steps=2",
        "--warmup=1",
    ],
    "profile_step": [
        "benchmarks/profile_step.py",
        "--config",
        "configs/test.py",
        # CPU's default depthwise formulation (configs/test.py sets "grouped"), whose kernel
        # gradient the profile names as a category of its own.
        "--config.model.depthwise_impl=auto",
        "--config.model.features=(4, 8)",
        "--config.data.image_size=16",
        AUTO_PRIOR,
        "--steps=1",
        "--warmup=0",
        "--top=3",
    ],
    "recipe_costs": [
        "benchmarks/recipe_costs.py",
        "--config",
        "configs/test.py",
        *SMALL,
        AUTO_PRIOR,
        "--steps=1",
        "--warmup=0",
        "--rounds=1",
        "--variants=batch=model.norm=batch;EMA=ema_decay=0.9",
    ],
    "input_pipeline": [
        "benchmarks/input_pipeline.py",
        "--data_dir=",
        "--max_images=0",
        "--image_size=32",
        "--equalize_images=4",
    ],
}
EXPECTED = {
    "train_throughput": "waiting for input",
    "train_throughput_no_warmup": "step time (median of 1)",
    "model_stats": "| test |",
    "seeds_throughput": "| 2 |",
    "input_pipeline": "cache on, later epochs",
    "profile_step": "| depthwise kernel gradient |",
    "recipe_costs": "| EMA | `ema_decay=0.9` |",
}


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_benchmark_script_runs_from_the_repository_root(name):
    # A subprocess sees one CPU device, like a user's shell; it keeps the suite's XLA flags
    # (quick compiles) and persistent compilation cache (tests/conftest.py).
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "TF_CPP_MIN_LOG_LEVEL": "2"}
    done = subprocess.run(
        [sys.executable, *COMMANDS[name]],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert EXPECTED[name] in done.stdout, done.stdout[-2000:]


@pytest.mark.slow
def test_gpu_check_dry_run_runs_every_section_on_the_cpu(tmp_path):
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
    done = subprocess.run(
        [
            "bash",
            "benchmarks/gpu_check.sh",
            "--dry_run",
            f"--python={sys.executable}",
            f"--out={tmp_path}",
        ],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=1200,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-2000:]
    out = done.stdout
    assert "all sections done" in out
    # What each section measured: the table, both formulations, the epochs, the seeds.
    assert "| custom 16px b2 w4 | baseline | bts_jax float32 |" in out
    assert "(depthwise dense)" in out and "(upsample gemm)" in out
    assert "| 2 |" in out.split("=== 3 paper protocol")[1].split("=== 4")[0]
    assert "| 2 |" in out.split("=== 4 seeds")[1]


# ----------------------------------------------------------------------------- kept cells


def test_reproduce_kept_cell_names_each_difference(trained_workdir, tmp_path):
    # The script defines its flags on import: imported fresh, and they are removed after.
    sys.modules.pop("reproduce_kept_cell", None)
    with defined_flags():
        import reproduce_kept_cell

    copy = copy_workdir(trained_workdir, tmp_path)
    assert reproduce_kept_cell.differences(trained_workdir, copy) == []
    rows = [json.loads(line) for line in read_text(copy, "metrics.jsonl").splitlines()]
    rows[0]["train_loss"] += 1e-7
    rows[0]["train_images_per_s"] += 1.0  # measured, never compared
    rows[0]["wall_s"] += 1.0  # measured, never compared
    with open(os.path.join(copy, "metrics.jsonl"), "w") as f:
        f.write("".join(json.dumps(row) + "\n" for row in rows))
    with open(os.path.join(copy, "per_image_validation.csv"), "a") as f:
        f.write("extra,row\n")
    found = reproduce_kept_cell.differences(trained_workdir, copy)
    assert len(found) == 2 and found[0].startswith("metrics.jsonl epoch 1 train_loss: kept")
    assert found[1] == "per_image_validation.csv differs"


def test_reproduce_kept_cell_records_a_rerun_by_other_code_in_the_cells_sweep(
    trained_workdir, tmp_path, capsys
):
    from bts_jax.experiments import provenance
    from bts_jax.workdir import environment

    sweep = tmp_path / "sweep"
    kept = sweep / "today" / "seed_0"
    shutil.copytree(trained_workdir, kept)
    shutil.copy(os.path.join(REPO, "docs", "results", "quickstart_ablation", "sweep.json"), sweep)
    # A rerun trained elsewhere, by another commit (the kept workdir's files, so identical).
    rerun = copy_workdir(trained_workdir, tmp_path)
    record = environment.read_environment(rerun)[-1]
    environment.write_environment(rerun, {**record, "code": {"git_commit": "c" * 40}})
    sys.modules.pop("reproduce_kept_cell", None)
    with defined_flags() as flags:
        import reproduce_kept_cell

        def run(*args):
            flags.unparse_flags()
            flags(["reproduce_kept_cell.py", f"--kept_cell={kept}", f"--workdir={rerun}", *args])
            reproduce_kept_cell.main([])

        run("--compare_only", f"--record_in={sweep}")
        assert capsys.readouterr().out.rstrip().endswith("identical")
        (check,) = provenance.read_code_checks(sweep)
        assert check["cell"] == "today/seed_0" and check["identical"]
        assert check["rerun_code"] == "c" * 12 and check["kept_code"] != check["rerun_code"]
        # Only the kept cell's own sweep takes the record; an existing rerun is never retrained.
        with pytest.raises(SystemExit, match="is not the sweep folder of --kept_cell"):
            run("--compare_only", f"--record_in={tmp_path}")
        with pytest.raises(SystemExit, match="exists: the rerun needs a new folder"):
            run(f"--record_in={sweep}")
    assert len(provenance.read_code_checks(sweep)) == 1


@pytest.mark.slow
def test_reproduce_kept_cell_retrains_the_trained_workdir_identically(trained_workdir, tmp_path):
    # The shared workdir was trained on one device, as this subprocess trains.
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "TF_CPP_MIN_LOG_LEVEL": "2"}
    command = ["benchmarks/reproduce_kept_cell.py", f"--kept_cell={trained_workdir}"]
    done = subprocess.run(
        [sys.executable, *command, f"--workdir={tmp_path / 'rerun'}"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    assert done.stdout.rstrip().endswith("identical")
    assert "metrics.jsonl (1 epochs" in done.stdout


# ----------------------------------------------------------------------------- oneDNN spike


def test_onednn_spike_table_reads_the_kept_run_and_judges_the_bar(capsys, monkeypatch):
    """`run.py table` reprints the kept timings; the wide float32 baseline misses 1.5x there."""
    # The folder (and what run.py adds to sys.path itself) leaves the path after this test: its
    # generic module names (run, shapes) would otherwise come first for every later test.
    monkeypatch.syspath_prepend(os.path.join(REPO, "benchmarks", "onednn_spike"))
    import run as onednn_spike

    kept = os.path.join(REPO, "benchmarks", "onednn_spike", "results_2026-12-07.json")
    assert onednn_spike.main(["table", kept]) == 0
    printed = capsys.readouterr().out
    rows = [line for line in printed.splitlines() if line.startswith("| wide | baseline | f32 |")]
    assert len(rows) == 1 and rows[0].endswith("| 1.41 | 1172 | 1.47 | no |"), rows
    quickstart = "| quickstart | paper | f32 | dense | 4.9 | 121 | 34 | 3.54 | 34 | 3.61 | yes |"
    assert quickstart in printed
