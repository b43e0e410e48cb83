"""Flags defined once (bts_jax/cli/flags.py, benchmarks/bench_flags.py), and clear config errors."""

import importlib
import os
import subprocess
import sys

import bench_flags
import pytest
from absl import flags
from helpers import defined_flags

from bts_jax import config_tools
from bts_jax.cli import flags as cli_flags
from bts_jax.configs import default

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PROGRAMS = ("train", "evaluate", "predict", "export", "sweep", "report", "compare")
TEST_CONFIG = os.path.join(REPO, "configs", "test.py")


def _helps(program: str) -> dict[str, str]:
    module = importlib.import_module(f"bts_jax.cli.{program}")
    with defined_flags() as registry:
        before = set(registry)
        module.define_flags()
        return {name: registry[name].help for name in set(registry) - before}


# ----------------------------------------------------------------------------- flags once


def test_programs_that_share_a_flag_share_its_definition():
    helps = {program: _helps(program) for program in PROGRAMS}
    assert helps["evaluate"]["split"] == helps["compare"]["split"]
    assert helps["report"]["model_stats"] == helps["sweep"]["model_stats"]
    assert helps["predict"]["batch_size"].startswith("Images per forward pass")
    for program in ("train", "sweep"):
        assert "config" in helps[program] and "workdir" in helps[program]
    for program in ("evaluate", "predict", "export"):
        assert helps[program]["workdir"] == helps["evaluate"]["workdir"]


def test_shared_definitions_parse_and_mark_required_flags():
    with defined_flags() as registry:
        cli_flags.define_config_flag("Experiment config.", lock=True)
        cli_flags.define_workdir_flag("Run folder.")
        cli_flags.define_split_flag()
        cli_flags.define_model_stats_flag()
        cli_flags.define_output_flag("File.")
        cli_flags.define_output_dir_flag("Folder.")
        cli_flags.define_batch_size_flag(4)
        cli_flags.define_num_images_flag(8, "Rows.")
        for missing in ("config", "workdir", "output"):
            argv = ["prog", f"--config={TEST_CONFIG}", "--workdir=w", "--output=o.png"]
            with pytest.raises(flags.IllegalFlagValueError, match=f"--{missing} must have"):
                registry([arg for arg in argv if not arg.startswith(f"--{missing}=")])
            registry.unparse_flags()
        registry(
            ["prog", f"--config={TEST_CONFIG}", "--workdir=w", "--output=o.png", "--split=test"]
        )
        assert registry.config.data.image_size == 32 and registry.workdir == "w"
        assert registry.split == "test" and registry.model_stats is True
        assert (registry.batch_size, registry.num_images, registry.output_dir) == (4, 8, None)
    with defined_flags() as registry:
        cli_flags.define_workdirs_flag()
        registry(["prog", "--workdir=a,b"])
        assert registry.workdir == ["a", "b"]
    with defined_flags() as registry:
        cli_flags.define_which_flag()
        cli_flags.define_data_dir_flag("Folder.", "d")
        registry(["prog", "--which=step:1536"])
        assert (registry.which, registry.data_dir) == ("step:1536", "d")
        registry.unparse_flags()
        with pytest.raises(flags.IllegalFlagValueError, match="best, latest or step:N"):
            registry(["prog", "--which=last"])


def test_benchmark_flags_belong_to_the_script_that_defines_them():
    with defined_flags() as registry:
        bench_flags.define_config_flag(TEST_CONFIG)
        bench_flags.define_step_flags(5, 2, "Profiled steps.")
        bench_flags.define_image_size_flag(64, "Input size.")
        registry(["prog", "--steps=3"])
        assert (registry.steps, registry.warmup, registry.image_size) == (3, 2, 64)
        assert registry.config.batch_size == 8
        assert registry["steps"].help == "Profiled steps."
        # The calling module owns them, so a script's --help lists them as its own.
        own = {flag.name for flag in registry.get_key_flags_for_module(__name__)}
        assert {"config", "steps", "warmup", "image_size"} <= own


# ----------------------------------------------------------------------------- config errors


def test_closest_fields_finds_typos_and_fields_without_their_section():
    fields = config_tools.field_names(default.get_config())
    assert config_tools.closest_fields("learning_rate", fields) == ["optimizer.learning_rate"]
    assert config_tools.closest_fields("optimizer.learnin_rate", fields) == [
        "optimizer.learning_rate"
    ]
    assert config_tools.closest_fields("model.featurs", fields) == ["model.features"]
    assert config_tools.closest_fields("batchsize", fields) == ["batch_size"]
    assert config_tools.closest_fields("xyz", fields) == []
    assert len(config_tools.closest_fields("a", ["ab", "ac", "ad", "ae"], n=2)) == 2


def test_field_names_hold_sections_and_leaves():
    assert config_tools.field_names({"a": {"b": 1, "c": {"d": 2}}, "e": 3}) == {
        "a",
        "a.b",
        "a.c",
        "a.c.d",
        "e",
    }


def test_unknown_field_message_is_one_line_with_the_suggestions():
    fields = ["optimizer.learning_rate", "batch_size"]
    assert config_tools.unknown_field_message("learning_rate", fields, "configs/test.py") == (
        "config.learning_rate is not a field of configs/test.py; did you mean "
        "optimizer.learning_rate?"
    )
    assert config_tools.unknown_field_message("xyz", fields, "c.py") == (
        "config.xyz is not a field of c.py."
    )


def test_check_fields_refuses_a_field_the_schema_lacks():
    schema = default.get_config()
    config_tools.check_fields(default.get_config(), schema, "default")
    config = default.get_config()
    config.learning_rate = 1e-3
    with pytest.raises(config_tools.UnknownFieldError, match="did you mean optimizer.learning"):
        config_tools.check_fields(config, schema, "my.py")


def test_config_overrides_and_value_are_read_from_the_command_line():
    argv = ["p", "--config", "c.py", "--config.a.b=1", "--noconfig.flag", "--workdir=w"]
    assert cli_flags.config_value(argv) == "c.py"
    assert cli_flags.config_value(["p", "--config=d.py:x"]) == "d.py:x"
    assert cli_flags.config_value(["p"]) is None
    assert cli_flags.config_overrides(argv) == ["a.b", "flag"]


def test_check_config_arguments_names_the_unknown_override_and_file_field(tmp_path):
    good = ["p", f"--config={TEST_CONFIG}", "--config.optimizer.learning_rate=1e-3"]
    cli_flags.check_config_arguments(good)
    assert cli_flags.prepare_config_argument(["p", "--config", "test"])[2] == TEST_CONFIG
    with pytest.raises(config_tools.UnknownFieldError, match=r"^--config.learning_rate is not"):
        cli_flags.check_config_arguments(
            ["p", f"--config={TEST_CONFIG}", "--config.learning_rate=1"]
        )
    bad = tmp_path / "bad.py"
    bad.write_text(
        "from bts_jax.configs import test\n\n"
        "def get_config():\n"
        "    config = test.get_config()\n"
        "    config.model.featurs = (4, 8)\n"
        "    return config\n"
    )
    with pytest.raises(config_tools.UnknownFieldError, match="did you mean model.features"):
        cli_flags.check_config_arguments(["p", f"--config={bad}"])


def _run(script: str, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
    return subprocess.run(
        [sys.executable, script, *args],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_an_unknown_config_key_is_one_line_and_status_2(tmp_path):
    # Before flag parsing and before JAX or TensorFlow is imported: a fraction of a second.
    done = _run(
        "train.py",
        "--config",
        "configs/test.py",
        "--config.learning_rate=1e-3",
        f"--workdir={tmp_path / 'w'}",
    )
    assert done.returncode == 2
    assert done.stderr == (
        "train.py: error: --config.learning_rate is not a field of configs/test.py; "
        "did you mean optimizer.learning_rate?\n"
    )
    assert not (tmp_path / "w").exists()
    bad = tmp_path / "bad.py"
    bad.write_text(
        "from bts_jax.configs import test\n\n"
        "def get_config():\n"
        "    config = test.get_config()\n"
        "    config.learning_rate = 1e-3\n"
        "    return config\n"
    )
    done = _run("train.py", f"--config={bad}", f"--workdir={tmp_path / 'w'}")
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert done.stderr.strip().endswith("did you mean optimizer.learning_rate?")
    assert len(done.stderr.strip().splitlines()) == 1
    done = _run(
        "sweep.py",
        "--config=configs/sweeps/paper_ablation.py",
        "--config.seedz=3",
        f"--workdir={tmp_path / 's'}",
    )
    assert (done.returncode, done.stderr) == (
        2,
        "sweep.py: error: --config.seedz is not a field of configs/sweeps/paper_ablation.py; "
        "did you mean seeds?\n",
    )


def test_sweep_overrides_name_the_closest_field_of_the_base_config():
    with pytest.raises(
        config_tools.UnknownFieldError, match="did you mean optimizer.learning_rate"
    ):
        config_tools.apply_overrides(
            default.get_config(), {"optimizer.learnig_rate": 1.0}, "sweep.overrides"
        )


def test_a_config_file_reading_a_missing_field_is_named(tmp_path):
    bad = tmp_path / "reads.py"
    bad.write_text(
        "from bts_jax.configs import test\n\n"
        "def get_config():\n"
        "    config = test.get_config()\n"
        "    config.optimizer.learning_rate = config.optimizer.learnin_rate * 2\n"
        "    return config\n"
    )
    with pytest.raises(
        config_tools.UnknownFieldError,
        match=r"get_config\(\) reads 'learnin_rate', .*did you mean optimizer.learning_rate\?$",
    ):
        cli_flags.check_config_arguments(["p", f"--config={bad}"])
    # Any other error of the file's own keeps its traceback.
    bad.write_text("import math\n\ndef get_config():\n    return math.no_such_function()\n")
    with pytest.raises(AttributeError, match="no_such_function"):
        cli_flags.check_config_arguments(["p", f"--config={bad}"])
