"""Workdir guards: writable at set-up, one run at a time, config changes refused or recorded."""

import errno
import json
import os
import signal
import subprocess
import sys

import pytest

from bts_jax import config_tools
from bts_jax import workdir as workdir_lib
from bts_jax.configs import test as test_config
from bts_jax.workdir import lock

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _record(config, workdir, step, changes):
    """What a run does once its config is checked: the history, then config.json."""
    workdir_lib.record_config(config, workdir, step, changes)
    workdir_lib.save_config(config, workdir)


def _saved_run(tmp_path, config):
    """A workdir as a new run leaves it."""
    _record(config, tmp_path, None, [])
    return tmp_path


# ----------------------------------------------------------------------------- config diff


def test_flatten_config_matches_the_saved_json():
    config = test_config.get_config()
    flat = config_tools.flatten_config(config)
    assert flat["optimizer.learning_rate"] == 1e-4
    assert flat["model.features"] == [4, 8, 16, 32]
    assert flat["data.augment.flip"] is True
    assert config_tools.flatten_config(json.loads(config.to_json_best_effort())) == flat


def test_diff_configs_lists_changed_added_and_removed_fields():
    saved = {"a": 1, "b.c": [1, 2], "gone": 0}
    new = {"a": 1, "b.c": [1, 3], "added": "x"}
    changes = workdir_lib.diff_configs(saved, new)
    assert [(c.field, c.old, c.new) for c in changes] == [
        ("added", "<absent>", "x"),
        ("b.c", [1, 2], [1, 3]),
        ("gone", 0, "<absent>"),
    ]


@pytest.mark.parametrize(
    "field,old,new,safe",
    [
        ("num_epochs", 2, 5, True),
        ("num_epochs", 5, 2, False),
        ("log_every_steps", 10, 1, True),
        ("checkpoint.max_to_keep", 3, 1, True),
        ("optimizer.learning_rate", 1e-4, 1e-3, False),
        ("model.eca_in", "encoder,decoder", "encoder", False),
    ],
)
def test_only_listed_changes_are_safe(field, old, new, safe):
    assert workdir_lib.ConfigChange(field, old, new).safe is safe


def test_changed_learning_rate_is_refused_with_a_diff_and_nothing_written(tmp_path):
    config = test_config.get_config()
    workdir = _saved_run(tmp_path, config)
    before = (workdir / "config.json").read_text()
    config.optimizer.learning_rate = 1e-3
    config.model.eca_in = "encoder"
    with pytest.raises(workdir_lib.ConfigChangedError) as raised:
        workdir_lib.check_config(config, workdir, checkpoint_step=6)
    message = str(raised.value)
    assert "latest step 6" in message and "--allow_config_change" in message
    assert "  model.eca_in: 'encoder,bottleneck,decoder' -> 'encoder'" in message
    assert "  optimizer.learning_rate: 0.0001 -> 0.001" in message
    assert (workdir / "config.json").read_text() == before


def test_allowed_and_safe_changes_are_kept_in_the_history(tmp_path):
    config = test_config.get_config()
    workdir = _saved_run(tmp_path, config)
    config.num_epochs = 3
    changes = workdir_lib.check_config(config, workdir, checkpoint_step=6)
    assert [c.field for c in changes] == ["num_epochs"]
    _record(config, workdir, 6, changes)
    config.optimizer.learning_rate = 1e-3
    changes = workdir_lib.check_config(config, workdir, checkpoint_step=12, allow_change=True)
    _record(config, workdir, 12, changes)
    history = workdir_lib.read_config_history(workdir)
    assert [(row["step"], row["changed"]) for row in history] == [
        (0, []),
        (6, ["num_epochs"]),
        (12, ["optimizer.learning_rate"]),
    ]
    assert history[-1]["config"]["optimizer"]["learning_rate"] == 1e-3
    assert history[1]["config"]["optimizer"]["learning_rate"] == 1e-4


def test_a_workdir_without_checkpoints_takes_any_config(tmp_path):
    config = test_config.get_config()
    workdir = _saved_run(tmp_path, config)
    config.optimizer.learning_rate = 1e-3
    assert workdir_lib.check_config(config, workdir, checkpoint_step=None) == []
    _record(config, workdir, None, [])
    history = workdir_lib.read_config_history(workdir)
    assert len(history) == 1 and history[0]["config"]["optimizer"]["learning_rate"] == 1e-3


def test_workdirs_from_before_the_block_registry_resume_unchanged(tmp_path):
    config = test_config.get_config()
    saved = json.loads(config.to_json_best_effort())
    for field in ("conv", "attention", "se_reduction"):
        del saved["model"][field]
    (tmp_path / "config.json").write_text(json.dumps(saved))
    assert workdir_lib.check_config(config, tmp_path, checkpoint_step=6) == []
    config.model.attention = "se"
    with pytest.raises(workdir_lib.ConfigChangedError, match="model.attention: '' -> 'se'"):
        workdir_lib.check_config(config, tmp_path, checkpoint_step=6)


def test_a_workdir_saved_before_upsample_impl_existed_resumes_unchanged(tmp_path):
    config = test_config.get_config()
    saved = json.loads(config.to_json_best_effort())
    del saved["model"]["upsample_impl"]
    (tmp_path / "config.json").write_text(json.dumps(saved))
    assert workdir_lib.check_config(config, tmp_path, checkpoint_step=6) == []
    # Switching formulations on resume is allowed: the same function and parameters.
    config.model.upsample_impl = "conv_transpose"
    changes = workdir_lib.check_config(config, tmp_path, checkpoint_step=6)
    assert [(c.field, c.safe) for c in changes] == [("model.upsample_impl", True)]


def test_workdirs_from_before_norms_and_the_head_prior_resume_unchanged(tmp_path):
    config = test_config.get_config()
    saved = json.loads(config.to_json_best_effort())
    for field in ("norm", "output_bias_prior"):
        del saved["model"][field]
    (tmp_path / "config.json").write_text(json.dumps(saved))
    assert workdir_lib.check_config(config, tmp_path, checkpoint_step=6) == []
    config.model.norm = "group(8)"
    config.model.output_bias_prior = "auto"
    changes = workdir_lib.check_config(config, tmp_path, checkpoint_step=6, allow_change=True)
    assert [(c.field, c.old, c.new) for c in changes] == [
        ("model.norm", "batch", "group(8)"),
        ("model.output_bias_prior", None, "auto"),
    ]


def test_non_finite_config_values_are_refused(tmp_path):
    config = test_config.get_config()
    config.optimizer.learning_rate = float("nan")
    with pytest.raises(ValueError, match=r"\['optimizer.learning_rate'\] are NaN or infinite"):
        workdir_lib.check_config(config, tmp_path, checkpoint_step=None)


# ----------------------------------------------------------------------------- writable


def test_workdir_under_a_file_fails_with_the_path(tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")
    with pytest.raises(workdir_lib.WorkdirNotWritableError, match=rf"{blocker} is a file"):
        workdir_lib.prepare_workdir(blocker / "run")
    with pytest.raises(workdir_lib.WorkdirNotWritableError, match=rf"{blocker} is a file"):
        workdir_lib.prepare_workdir(blocker)


def test_full_disk_fails_with_the_path_and_reason(tmp_path, monkeypatch):
    def full(fd):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(lock.os, "fsync", full)
    with pytest.raises(workdir_lib.WorkdirNotWritableError) as raised:
        workdir_lib.prepare_workdir(tmp_path / "run")
    assert f"{tmp_path / 'run'}: No space left on device" in str(raised.value)
    assert os.listdir(tmp_path / "run") == []  # The probe file is gone.


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_read_only_workdir_fails_with_the_path_and_reason(tmp_path):
    workdir = tmp_path / "run"
    workdir.mkdir()
    workdir.chmod(0o500)
    try:
        with pytest.raises(workdir_lib.WorkdirNotWritableError, match="Permission denied"):
            workdir_lib.prepare_workdir(workdir)
    finally:
        workdir.chmod(0o700)


# ----------------------------------------------------------------------------- lock

_HOLD_LOCK = """
import sys, time
from bts_jax import workdir as workdir_lib
lock = workdir_lib.WorkdirLock(sys.argv[1])
lock.acquire()
print("locked", flush=True)
time.sleep(600)
"""


@pytest.mark.slow
def test_second_run_stops_naming_the_holder_and_a_dead_holders_lock_is_taken_over(tmp_path):
    holder = subprocess.Popen(
        [sys.executable, "-c", _HOLD_LOCK, str(tmp_path)],
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": REPO},
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(workdir_lib.WorkdirLockedError) as raised:
            workdir_lib.WorkdirLock(tmp_path).acquire()
        assert f"process {holder.pid} on host" in str(raised.value)
        assert str(tmp_path) in str(raised.value)
    finally:
        os.kill(holder.pid, signal.SIGKILL)
        holder.wait()
    # The killed holder's file still names it, but the OS freed the lock.
    assert str(holder.pid) in (tmp_path / ".lock").read_text()
    with workdir_lib.WorkdirLock(tmp_path):
        assert json.loads((tmp_path / ".lock").read_text())["pid"] == os.getpid()
        # Another open of the lock file (as a second run in this process would) is refused.
        with pytest.raises(workdir_lib.WorkdirLockedError, match=f"process {os.getpid()}"):
            workdir_lib.WorkdirLock(tmp_path).acquire()
    assert (tmp_path / ".lock").read_text() == ""
    with workdir_lib.WorkdirLock(tmp_path):  # Released: it can be taken again.
        pass


def test_each_process_of_a_multi_host_run_locks_its_own_file(tmp_path):
    with workdir_lib.WorkdirLock(tmp_path, 0), workdir_lib.WorkdirLock(tmp_path, 1):
        assert sorted(os.listdir(tmp_path)) == [".lock", ".lock.1"]
