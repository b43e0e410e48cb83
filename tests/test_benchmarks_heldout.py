"""benchmarks/heldout_quickstart.py: held-out blocks, leak check, run time, a short run."""

import json
import os

import heldout_quickstart
import pytest

from bts_jax.data import sources, splits

SHARED = os.path.join(
    os.path.dirname(__file__), "..", "..", "shared", "data", "figshare_brain_tumor"
)
needs_shared = pytest.mark.skipif(
    not os.path.isdir(SHARED), reason="shared figshare folder not present"
)


@needs_shared
def test_heldout_slices_are_the_last_ids_of_each_type_and_in_no_bundle():
    heldout = splits.heldout_block(SHARED, 0.15)
    assert len(heldout) >= 300
    bundled = {e.id for folder in sources.SAMPLE_DIRS.values() for e in sources.list_folder(folder)}
    assert not {e.id for e in heldout} & bundled
    everything = sources.list_folder(SHARED)
    for label in (1, 2, 3):
        held = {int(e.id) for e in heldout if e.label == label}
        later_bundled = [
            int(e.id)
            for e in everything
            if e.label == label and e.id in bundled and int(e.id) > min(held)
        ]
        # Only the few full-size sample ids (kept out of the scored set) lie inside the blocks.
        assert len(later_bundled) <= 4 and held


def test_heldout_examples_needs_tumour_types(tmp_path):
    for sub in ("images", "masks"):
        os.makedirs(tmp_path / sub)
        (tmp_path / sub / "1.png").write_bytes(b"")
    with pytest.raises(ValueError, match="metadata.csv"):
        splits.heldout_block(str(tmp_path), 0.15)


def test_check_unseen_refuses_a_run_that_saw_a_heldout_id(tmp_path, capsys):
    heldout_quickstart.check_unseen(str(tmp_path), {"7"})
    assert "cannot check" in capsys.readouterr().out
    with open(tmp_path / "data_split.json", "w") as f:
        json.dump({"train": ["1", "2"], "validation": ["7", "8"]}, f)
    heldout_quickstart.check_unseen(str(tmp_path), {"3"})
    with pytest.raises(ValueError, match="validation split"):
        heldout_quickstart.check_unseen(str(tmp_path), {"3", "7"})
    # A run's own test split is never trained or selected on (a run on the whole folder).
    with open(tmp_path / "data_split.json", "w") as f:
        json.dump({"train": ["1", "2"], "validation": ["4"], "test": ["7", "8"]}, f)
    heldout_quickstart.check_unseen(str(tmp_path), {"7", "8"})


def test_script_without_the_folder_says_so_in_one_line(tmp_path, capsys):
    # As from a fresh clone without ../shared: the folder named, no traceback.
    missing = str(tmp_path / "no_figshare")
    with pytest.raises(SystemExit) as exit_info:
        heldout_quickstart.main(["--workdir", str(tmp_path), "--data_dir", missing])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("heldout_quickstart.py: FileNotFoundError: Data folder not found: ")
    assert missing in err and len(err.splitlines()) == 1


def test_training_seconds_from_metrics_or_file_times(tmp_path):
    assert heldout_quickstart.training_seconds(str(tmp_path)) is None
    for name in ("config.json", "eval_validation.json"):
        (tmp_path / name).write_text("{}")
    os.utime(tmp_path / "config.json", (1000.0, 1000.0))
    os.utime(tmp_path / "eval_validation.json", (1250.0, 1250.0))
    assert heldout_quickstart.training_seconds(str(tmp_path)) == 250.0
    (tmp_path / "metrics.jsonl").write_text('{"step": 1}\n{"step": 2, "train_wall_s": 99.5}\n')
    assert heldout_quickstart.training_seconds(str(tmp_path)) == 99.5


@pytest.mark.slow
@needs_shared
def test_script_scores_a_tiny_trained_workdir(trained_workdir, tmp_path, capsys):
    workdir = trained_workdir
    out_json = tmp_path / "heldout.json"
    args = ["--workdir", workdir, "--data_dir", SHARED, "--max_images", "3"]
    assert heldout_quickstart.main([*args, "--batch_size", "2", "--json", str(out_json)]) == 0
    printed = capsys.readouterr().out
    assert "held-out slices: 3 (1 meningioma, 1 glioma, 1 pituitary)" in printed
    for needle in ("tumour Dice (all pixels)", "empty predictions", "training wall time"):
        assert needle in printed
    result = json.loads(out_json.read_text())
    assert result["num_images"] == 3
    assert 0.0 <= result["dice"] <= 1.0 and 0.0 <= result["pred_empty_share"] <= 1.0
    assert result["train_s"] > 0
