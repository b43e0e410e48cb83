"""A run's own records: environment.json (where it ran), data_split.json read back, messages."""

import json
import os
import platform
import subprocess
import warnings

import jax
import pytest

from bts_jax import data as data_lib
from bts_jax import workdir as workdir_lib
from bts_jax.configs import test as test_config
from bts_jax.workdir import environment

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _splits():
    config = test_config.get_config()
    examples = data_lib.get_examples(config.data, validate=False)
    return {"source": examples, **data_lib.split_examples(config, examples)}


def test_an_environment_record_names_versions_devices_code_and_data():
    record = environment.environment_record(_splits(), step=6, devices=jax.devices()[:2])
    assert record["step"] == 6 and record["python"]
    assert {"jax", "jaxlib", "flax", "optax", "orbax-checkpoint", "numpy"} <= set(
        record["versions"]
    )
    assert "tensorflow" in record["versions"] or "tensorflow-cpu" in record["versions"]
    assert record["devices"] == {"kinds": ["cpu:cpu"], "count": 2}
    assert record["cpu"]["cores"] == os.cpu_count()
    assert record["xla_flags"] == os.environ.get("XLA_FLAGS", "")
    commit = subprocess.run(
        ["git", "-C", REPO, "rev-parse", "HEAD"], capture_output=True, text=True
    )
    if commit.returncode == 0:
        assert record["code"]["git_commit"] == commit.stdout.strip()
        assert isinstance(record["code"]["git_dirty"], bool)
    source = record["data"]["source"]
    sizes = sum(os.path.getsize(e.image) + os.path.getsize(e.mask) for e in _splits()["source"])
    assert source["examples"] == 60 and source["bytes"] == sizes and len(source["sha256"]) == 64
    assert record["data"]["validation"]["examples"] == 12


def test_the_cpu_is_named_from_cpuinfo(tmp_path):
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text("processor\t: 0\nvendor_id\t: AuthenticAMD\nmodel name\t: AMD EPYC 9R14\n")
    assert environment.cpu_description(str(cpuinfo)) == {
        "model": "AMD EPYC 9R14",
        "cores": os.cpu_count(),
    }
    elsewhere = environment.cpu_description(str(tmp_path / "missing"))
    assert elsewhere["model"] == platform.processor()
    # Two generations that share a model name differ in family and model numbers (Zen 4, Zen 5).
    for family, number in (("25", "17"), ("26", "2")):
        cpuinfo.write_text(
            f"processor\t: 0\ncpu family\t: {family}\nmodel\t\t: {number}\n"
            "model name\t: AMD EPYC\n\nprocessor\t: 1\ncpu family\t: 99\n"
        )
        assert environment.cpu_description(str(cpuinfo)) == {
            "model": "AMD EPYC",
            "cores": os.cpu_count(),
            "family": family,
            "model_number": number,
        }


def test_outside_a_checkout_the_code_is_the_installed_version(tmp_path):
    assert environment.code_version(str(tmp_path)) == {
        "installed_version": environment._version("bts_jax")
    }


def test_records_append_and_differences_name_what_changed(tmp_path):
    first = environment.environment_record(_splits(), step=0, devices=jax.devices()[:1])
    second = json.loads(json.dumps(first))
    second["step"] = 12
    assert environment.differences(first, second) == []  # a resume on the same machine
    second["versions"]["jax"] = "0.0.1"
    second["devices"]["count"] = 8
    second["data"]["test"] = {"examples": 1, "bytes": 1, "sha256": "x"}
    second["data"]["train"] = {"examples": 1, "bytes": 1, "sha256": "y"}  # folds differ by design
    found = environment.differences(first, second)
    assert any(line.startswith("versions.jax:") for line in found)
    assert "devices.count: 1 vs 8" in found
    assert any(line.startswith("data.test:") for line in found)
    assert not any(line.startswith("data.train") for line in found)
    workdir_lib.write_environment(tmp_path, first)
    workdir_lib.write_environment(tmp_path, second)
    assert [r["step"] for r in workdir_lib.read_environment(tmp_path)] == [0, 12]


def test_a_run_records_its_environment_at_each_start(trained_workdir):
    (record,) = workdir_lib.read_environment(trained_workdir)
    assert record["step"] == 0 and record["devices"]["count"] == 1
    assert record["data"]["source"]["examples"] == 60


def test_recorded_split_ids_read_back_what_the_run_wrote(trained_workdir):
    with open(os.path.join(trained_workdir, "data_split.json")) as f:
        written = json.load(f)
    assert workdir_lib.recorded_split_ids(trained_workdir, "validation") == written["validation"]
    assert workdir_lib.recorded_split_ids(trained_workdir, "nope") is None
    assert workdir_lib.read_split_file(os.path.dirname(trained_workdir)) is None


def test_an_empty_evaluation_split_names_every_split_and_the_settings(tmp_path):
    folder = tmp_path / "three"
    for sub in ("images", "masks"):
        (folder / sub).mkdir(parents=True)
        for name in sorted(os.listdir(os.path.join(data_lib.SAMPLE_DIR, sub)))[:3]:
            os.symlink(os.path.join(data_lib.SAMPLE_DIR, sub, name), folder / sub / name)
    config = test_config.get_config()
    config.data.source, config.data.data_dir = "folder", str(folder)
    config.eval_batch_size = 1
    pipeline = data_lib.InputPipeline(config, process_index=0, process_count=1)
    with pytest.raises(ValueError) as raised:
        pipeline.eval_batches("test")
    message = str(raised.value)
    assert "the test split holds 0 of the 3 images" in message
    assert "train 2, validation 1, test 0" in message
    assert "config.data.test_fraction=0.0" in message and "config.eval_batch_size=1" in message


def test_a_metadata_file_missing_ids_warns_once_however_often_the_folder_is_listed(tmp_path):
    folder = tmp_path / "sample"
    folder.mkdir()
    for sub in ("images", "masks"):
        os.symlink(os.path.join(data_lib.SAMPLE_DIR, sub), folder / sub)
    with open(os.path.join(data_lib.SAMPLE_DIR, "metadata.csv")) as f:
        rows = f.read().splitlines()
    (folder / "metadata.csv").write_text("\n".join(rows[:-8]) + "\n")
    config = {"source": "folder", "data_dir": str(folder), "strict_masks": False}
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("default")  # as a script runs: once per text and place
        for _ in range(3):
            data_lib.get_examples(config, validate=False)
    messages = [str(w.message) for w in caught if "has no row for" in str(w.message)]
    assert len(messages) == 1
    assert "has no row for 8 of 60 image(s)" in messages[0]
