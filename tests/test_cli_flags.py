"""Flags defined once: bts_jax/cli/flags.py for the programs, benchmarks/bench_flags.py."""

import contextlib
import importlib
import os

import bench_flags
import pytest
from absl import flags

from bts_jax.cli import flags as cli_flags

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PROGRAMS = ("train", "evaluate", "predict", "export", "sweep", "report", "compare")
TEST_CONFIG = os.path.join(REPO, "configs", "test.py")


@contextlib.contextmanager
def defined_flags():
    """absl's global flags, with whatever the block defines removed again at its end.

    The programs define their flags into one global registry; removing them lets one test
    process define the flags of several programs in turn, as each program does alone.
    """
    before = set(flags.FLAGS)
    try:
        yield flags.FLAGS
    finally:
        for name in set(flags.FLAGS) - before:
            delattr(flags.FLAGS, name)
        flags.FLAGS.unparse_flags()


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
