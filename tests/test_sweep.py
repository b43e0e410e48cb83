"""Sweeps end to end on a tiny config: cells, report, resume after a crash, changed definitions."""

import json
import os
import shutil
import subprocess
import sys

import ml_collections
import pytest
from helpers import LoggedProcess, read_text

from bts_jax import train as train_lib
from bts_jax import workdir as workdir_lib
from bts_jax.experiments import runner, sweeps

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def tiny_sweep(**changes):
    config = ml_collections.ConfigDict()
    config.name = "tiny"
    config.base_config = "configs/test.py"
    # helpers.SMALL_MODEL: two stages at 16 px, so the sweep's cells compile in half the time.
    config.overrides = {
        "data": {"test_fraction": 0.15, "image_size": 16},
        "model": {"features": (4, 8)},
        "num_epochs": 1,
        "num_predictions": 2,
    }
    config.variants = {
        "unet": {"model": {"gsconv_in": "", "eca_in": ""}},
        "paper": {"model": {"gsconv_in": "encoder,bottleneck,decoder"}},
    }
    config.baseline = "unet"
    config.paper_model = "paper"
    config.seeds = (0, 1)
    config.folds = ()
    config.devices_per_run = 4  # 8 fake CPU devices: two cells side by side
    config.update(changes)
    return config


class CountingTrainer:
    """train_and_evaluate that records its cells and can crash one of them before training."""

    def __init__(self, crash_on=None):
        self.cells, self.crash_on = [], crash_on

    def __call__(self, config, workdir, **kwargs):
        name = os.path.relpath(workdir, os.path.dirname(os.path.dirname(workdir)))
        self.cells.append(name)
        if name == self.crash_on:
            raise RuntimeError(f"simulated crash in {name}")
        return train_lib.train_and_evaluate(config, workdir, **kwargs)


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    directory = str(tmp_path_factory.mktemp("sweep") / "tiny")
    first = CountingTrainer(crash_on="paper/seed_1")
    with pytest.raises(RuntimeError, match="simulated crash in paper/seed_1"):
        runner.run_sweep(tiny_sweep(), directory, repo_root=REPO, train_fn=first)
    second = CountingTrainer()
    result = runner.run_sweep(
        tiny_sweep(), directory, repo_root=REPO, train_fn=second, model_stats=False
    )
    return directory, first, second, result


@pytest.mark.slow
def test_cells_are_ordinary_runs_with_test_results(finished):
    directory, *_ = finished
    for variant in ("unet", "paper"):
        for seed in (0, 1):
            cell = os.path.join(directory, variant, f"seed_{seed}")
            for name in ("config.json", "eval_test.json", "per_image_test.csv", "cell.json"):
                assert os.path.isfile(os.path.join(cell, name)), (cell, name)
            with open(os.path.join(cell, "config.json")) as f:
                config = json.load(f)
            assert config["seed"] == seed
            assert (config["model"]["gsconv_in"] == "") == (variant == "unet")


@pytest.mark.slow
def test_a_crashed_sweep_resumes_and_skips_finished_cells(finished):
    _, first, second, result = finished
    # The crash of one cell does not stop the cells running beside it or after it.
    assert sorted(first.cells) == ["paper/seed_0", "paper/seed_1", "unet/seed_0", "unet/seed_1"]
    assert second.cells == ["paper/seed_1"]
    assert result["trained"] == ["paper/seed_1"]
    assert sorted(result["skipped"]) == ["paper/seed_0", "unet/seed_0", "unet/seed_1"]


@pytest.mark.slow
def test_report_files_and_figures(finished):
    directory, _, _, result = finished
    for name in ("report.md", "summary.csv", "summary.json", "test_dice.png", "val_miou.png"):
        assert os.path.isfile(os.path.join(directory, name)), name
    assert os.path.isfile(os.path.join(directory, "predictions_test.png"))
    with open(os.path.join(directory, "summary.json")) as f:
        summary = json.load(f)
    assert summary["missing"] == []
    with open(os.path.join(directory, "report.md")) as f:
        text = f.read()
    assert "unet" in text and "paper" in text and "Holm" in text


@pytest.mark.slow
def test_a_changed_definition_is_refused_naming_the_cell(finished):
    directory, *_ = finished
    changed = tiny_sweep()
    changed.overrides = {**changed.overrides.to_dict(), "optimizer": {"learning_rate": 0.5}}
    with pytest.raises(
        ValueError, match=r"existing cell paper/seed_0 .*optimizer.learning_rate: 0.0001 -> 0.5"
    ):
        runner.run_sweep(changed, directory, repo_root=REPO, train_fn=CountingTrainer())


@pytest.mark.slow
def test_a_second_run_trains_nothing(finished):
    directory, *_ = finished
    trainer = CountingTrainer()
    result = runner.run_sweep(
        tiny_sweep(), directory, repo_root=REPO, train_fn=trainer, write_report=False
    )
    assert trainer.cells == [] and result["trained"] == [] and len(result["skipped"]) == 4


@pytest.mark.slow
def test_a_sweep_continues_in_its_exported_results(finished, tmp_path):
    directory, *_ = finished
    definition = tmp_path / "tiny.py"  # tiny_sweep() as a file, for the script
    definition.write_text(
        f"import sys\nsys.path.insert(0, {os.path.dirname(__file__)!r})\n"
        "from test_sweep import tiny_sweep\n\n\ndef get_config():\n    return tiny_sweep()\n"
    )
    copy = tmp_path / "kept"
    command = [sys.executable, "sweep.py", f"--config={definition}", f"--workdir={directory}"]
    done = subprocess.run(
        [*command, f"--export_results={copy}"], cwd=REPO, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert f"Exported 4 finished cell(s) to {copy}." in done.stdout
    assert not os.path.exists(copy / "unet" / "seed_1" / "best")
    # Continued in the copy, the sweep trains only the cell taken out of it, to the same report.
    shutil.rmtree(copy / "unet" / "seed_1")
    trainer = CountingTrainer()
    result = runner.run_sweep(
        tiny_sweep(), copy, repo_root=REPO, train_fn=trainer, model_stats=False
    )
    assert trainer.cells == ["unet/seed_1"] and len(result["skipped"]) == 3
    with open(os.path.join(directory, "summary.json")) as f:
        original = json.load(f)
    with open(copy / "summary.json") as f:
        again = json.load(f)
    assert again["comparisons"] == original["comparisons"]


@pytest.mark.parametrize(
    "changes,message",
    [
        ({"baseline": "resnet"}, r"sweep.baseline='resnet' is not one of"),
        ({"paper_model": "gs"}, r"sweep.paper_model='gs'"),
        ({"seeds": (0, 0)}, r"sweep.seeds has repeated entries"),
        ({"seeds": ()}, r"sweep.seeds must be a non-empty list"),
        ({"devices_per_run": 16}, r"sweep.devices_per_run=16 but only 8 device"),
        ({"variants": {}}, r"sweep.variants must map at least one"),
        (
            {"overrides": {"model": {"widths": 3}}},
            r"sweep.overrides: 'model.widths' is not a field",
        ),
        ({"variants": {"unet": {"optimiser": {"lr": 1}}}}, r"sweep.variants.unet: 'optimiser.lr'"),
        ({"base_config": "configs/nope.py"}, r"Config file not found: .*configs/nope.py"),
    ],
)
def test_bad_definitions_are_named(changes, message, tmp_path):
    config = tiny_sweep()
    for key, value in changes.items():
        if key == "variants" and value:
            config.variants = {**value, "paper": {"model": {"eca_in": ""}}}
        else:
            config[key] = value
    with pytest.raises((ValueError, FileNotFoundError), match=message):
        runner.run_sweep(config, tmp_path / "bad", repo_root=REPO, train_fn=CountingTrainer())


@pytest.mark.slow
def test_sweep_script_rejects_a_missing_config_file(tmp_path):
    done = subprocess.run(
        [
            sys.executable,
            "sweep.py",
            "--config",
            "configs/sweeps/nope.py",
            "--workdir",
            str(tmp_path),
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode != 0 and "nope.py" in done.stderr


# ----------------------------------------------------------------------------- cluster, folders


@pytest.mark.slow
def test_list_shows_each_cell_with_its_index_and_state(finished, tmp_path):
    directory, *_ = finished
    lines = runner.list_cells(tiny_sweep(), directory)
    # The order of expand_cells: variants as the config lists them (a ConfigDict sorts them).
    assert [line.split()[:3] for line in lines] == [
        ["0", "paper/seed_0", "done"],
        ["1", "paper/seed_1", "done"],
        ["2", "unet/seed_0", "done"],
        ["3", "unet/seed_1", "done"],
    ]
    fresh = runner.list_cells(tiny_sweep(), tmp_path / "fresh")
    assert all(line.endswith("new") for line in fresh)


@pytest.mark.slow
def test_a_cell_held_by_a_live_process_is_listed_as_running(finished, tmp_path):
    directory, *_ = finished
    cell = os.path.join(directory, "paper", "seed_0")
    with workdir_lib.WorkdirLock(cell):
        (line, *_) = runner.list_cells(tiny_sweep(), directory)
        assert f"running (process {os.getpid()}" in line
        # A sweep asked for that cell leaves it to its holder instead of failing.
        status = os.path.join(cell, "cell.json")
        os.rename(status, status + ".hidden")
        try:
            result = runner.run_sweep(
                tiny_sweep(), directory, train_fn=CountingTrainer(), write_report=False, cells=[0]
            )
        finally:
            os.rename(status + ".hidden", status)
    assert result["busy"] == ["paper/seed_0"] and result["trained"] == []


@pytest.mark.slow
def test_cell_indices_out_of_range_are_named(finished):
    directory, *_ = finished
    with pytest.raises(ValueError, match=r"Cell index \[7\] out of range: the sweep has cells 0-3"):
        runner.run_sweep(tiny_sweep(), directory, train_fn=CountingTrainer(), cells=[7])


@pytest.mark.parametrize(
    "changes,message",
    [
        ({"test_heldout_fraction": 0.15}, r"sweep.test_heldout_fraction=0.15 .*sweep.test_folder"),
        ({"test_folder": 3}, r"sweep.test_folder=3 must be a folder path"),
        ({"variant_seeds": {"vgg": (0,)}}, r"sweep.variant_seeds names \['vgg'\]"),
        ({"variant_seeds": {"unet": ()}}, r"sweep.variant_seeds.unet must be a non-empty list"),
        ({"score_split": "train"}, r"sweep.score_split='train' must be one of \['test', "),
        (
            {"score_split": "validation", "test_folder": "images"},
            r"sweep.score_split='validation' .*cannot go with sweep.test_folder",
        ),
    ],
)
def test_bad_test_folders_and_variant_seeds_are_named(changes, message):
    with pytest.raises(ValueError, match=message):
        sweeps.parse_sweep(tiny_sweep(**changes))


def test_a_study_scored_on_validation_reads_no_test_split(tmp_path):
    assert sweeps.parse_sweep(tiny_sweep()).test_split == "test"
    definition = sweeps.parse_sweep(tiny_sweep(score_split="validation", devices_per_run=0))
    assert (definition.test_split, definition.scored_title) == ("validation", "Validation")
    # sweep.json reads back through the same checks; files written before the field mean "test".
    path = sweeps.write_sweep(definition, tmp_path)
    assert sweeps.load_sweep(tmp_path).to_json() == json.loads(json.dumps(definition.to_json()))
    written = json.loads(read_text(path))
    del written["score_split"]
    with open(path, "w") as f:
        json.dump(written, f)
    assert sweeps.load_sweep(tmp_path).score_split == "test"


def test_variant_seeds_give_a_variant_its_own_cells():
    definition = sweeps.parse_sweep(tiny_sweep(variant_seeds={"paper": (0, 5)}))
    names = [cell.name for cell in sweeps.expand_cells(definition, "/sweep")]
    assert names == ["paper/seed_0", "paper/seed_5", "unet/seed_0", "unet/seed_1"]
    assert definition.to_json()["variant_seeds"] == {"paper": [0, 5]}


@pytest.mark.slow
def test_a_test_folder_scores_every_cell_and_a_rerun_is_bit_identical(tmp_path):
    sample = os.path.join(REPO, "bts_jax", "data", "sample")
    sweep = tiny_sweep(seeds=(0,), paper_model="", test_folder=sample)
    # (ConfigDict.update merges mappings: the variants are replaced, not updated.)
    sweep.variants = {"unet": {"model": {"gsconv_in": "", "eca_in": ""}}}
    sweep.devices_per_run = 0
    directory = str(tmp_path / "scored")
    runner.run_sweep(sweep, directory, model_stats=False)
    cell = os.path.join(directory, "unet", "seed_0")
    with open(os.path.join(cell, "eval_external_test.json")) as f:
        scored = json.load(f)
    assert scored["num_images"] == 60 and scored["test_folder"] == os.path.abspath(sample)
    with open(os.path.join(directory, "summary.json")) as f:
        summary = json.load(f)
    assert summary["sweep"]["test_folder"] == sample and len(summary["finished"]) == 1
    # The cell recorded which images it was scored on; the folder still holds them.
    assert scored["test_data"]["examples"] == 60
    scored_on = summary["provenance"]["test_images"]
    assert scored_on["recorded"][0]["runs"] == ["unet/seed_0"] and scored_on["warnings"] == []
    record = runner.reproduce_cell(sweep, directory, 0)
    assert record["identical"], record["differences"]
    assert "best checkpoint: params and batch_stats" in record["compared"]
    assert "eval_external_test.json" in record["compared"]
    with open(os.path.join(directory, "reproducibility.json")) as f:
        assert json.load(f)["identical"] is True


TWO_CELLS = """
import ml_collections


def get_config():
    sweep = ml_collections.ConfigDict()
    sweep.name = "two_cells"
    sweep.base_config = "configs/test.py"
    sweep.overrides = {
        "data": {"test_fraction": 0.15, "image_size": 16},
        "model": {"features": (4, 8)},
        "num_epochs": 1,
        "num_predictions": 1,
    }
    sweep.variants = {
        "unet": {"model": {"gsconv_in": "", "eca_in": ""}},
        "paper": {"model": {"gsconv_in": "encoder,bottleneck,decoder"}},
    }
    sweep.baseline = "unet"
    sweep.paper_model = "paper"
    sweep.seeds = (0,)
    sweep.folds = ()
    sweep.devices_per_run = 0
    return sweep
"""


@pytest.mark.slow
def test_two_processes_run_cells_concurrently_and_report_like_a_sequential_run(tmp_path):
    definition = tmp_path / "two_cells.py"
    definition.write_text(TWO_CELLS)
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}

    def sweep(workdir, *flags):
        command = [sys.executable, "sweep.py", f"--config={definition}", f"--workdir={workdir}"]
        log = tmp_path / f"{os.path.basename(workdir)}{''.join(flags)}.log"
        return LoggedProcess([*command, "--nomodel_stats", *flags], log, cwd=REPO, env=env)

    concurrent = [sweep(tmp_path / "pair", "--cell", str(k)) for k in (0, 1)]
    sequential = sweep(tmp_path / "one")
    try:
        for proc in (*concurrent, sequential):
            proc.successful_output(timeout=900)
    finally:
        for proc in (*concurrent, sequential):
            proc.kill()
    assert not os.path.exists(tmp_path / "pair" / "report.md")  # --cell leaves it to report.py
    done = subprocess.run(
        [sys.executable, "report.py", str(tmp_path / "pair"), "--nomodel_stats"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]

    def numbers(folder):
        with open(folder / "summary.json") as f:
            summary = json.load(f)
        for row in summary["variants"].values():
            row.pop("train_images_per_s"), row.pop("wall_s")
        return summary["variants"], summary["comparisons"], summary["claims"]

    assert numbers(tmp_path / "pair") == numbers(tmp_path / "one")
