"""Installed, not cloned: the wheel in a fresh environment, every command from an empty folder."""

import glob
import os
import subprocess
import sys
import sysconfig

import pytest

from bts_jax.workdir import read_environment

# Building and installing a wheel, then training in a new process: the slow tier.
pytestmark = pytest.mark.slow

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
COMMANDS = ("bts-train", "bts-evaluate", "bts-predict", "bts-export")
COMMANDS += ("bts-sweep", "bts-report", "bts-compare")


def _run(args, cwd, env, timeout=600):
    done = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, f"{args}\n{done.stdout[-2000:]}\n{done.stderr[-3000:]}"
    return done.stdout + done.stderr  # stderr: absl's log lines


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    """A fresh virtual environment with the wheel of this checkout installed, offline.

    The wheel is built as a user builds it: pip fetches the build backend that pyproject.toml
    names (setuptools>=77) into an isolated build environment, as `pip install` does.
    The dependencies are the ones already installed for the tests: their site-packages folder is
    put on the new environment's path, after its own, so only bts_jax comes from the wheel.
    """
    root = tmp_path_factory.mktemp("install")
    dist = root / "dist"
    _run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--wheel-dir", str(dist), REPO],
        cwd=root,
        env=os.environ,
    )
    (wheel,) = glob.glob(str(dist / "bts_jax-*.whl"))
    venv = root / "venv"
    _run([sys.executable, "-m", "venv", "--without-pip", str(venv)], cwd=root, env=os.environ)
    python = venv / "bin" / "python"
    site = _run(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        cwd=root,
        env=os.environ,
    ).splitlines()[0]
    with open(os.path.join(site, "test_dependencies.pth"), "w") as f:
        f.write(sysconfig.get_paths()["purelib"] + "\n")
    _run(
        [sys.executable, "-m", "pip", "--python", str(python), "install", "--no-deps"]
        + ["--no-index", wheel],
        cwd=root,
        env=os.environ,
    )
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "PATH": f"{venv / 'bin'}:{os.environ['PATH']}"}
    env.pop("PYTHONPATH", None)
    return venv, site, env


def test_the_wheel_holds_the_package_and_its_configs_but_no_checkout(installed):
    venv, site, _ = installed
    package = os.path.join(site, "bts_jax")
    # The oneDNN extension's source: an installed bts_jax builds it on first use.
    names = ("configs/quickstart.py", "configs/sweeps/paper_ablation.py", "cli/train.py")
    for name in (*names, "models/onednn/onednn_conv.cpp"):
        assert os.path.isfile(os.path.join(package, name)), name
    assert os.path.isdir(os.path.join(package, "data", "sample_128", "images"))
    assert not os.path.exists(os.path.join(site, "configs")), "configs/ must live in bts_jax"
    for command in COMMANDS:
        assert os.access(venv / "bin" / command, os.X_OK), command


def test_every_command_runs_from_an_empty_folder(installed, tmp_path):
    venv, site, env = installed
    cwd = tmp_path / "somewhere"
    cwd.mkdir()
    # helpers.SMALL_MODEL: the commands' wiring is under test, and every later command compiles
    # this run's model.
    small = ["--config.model.features=(4, 8)", "--config.data.image_size=16"]
    out = _run(
        ["bts-train", "--config", "test", "--workdir", "run", "--config.num_epochs=1", *small],
        cwd,
        env,
    )
    assert "Validation (best checkpoint" in out
    run = cwd / "run"
    # One CPU device and conv_impl "auto": oneDNN where the [onednn] extra is installed, else XLA
    # with one line saying why (CI has no oneDNN; the project's machines run both cases).
    conv_impl = read_environment(run)[-1]["conv_impl"]
    fallback = "config.model.conv_impl='auto' uses XLA's convolutions: "
    if conv_impl == "onednn":
        assert fallback not in out
    else:
        assert conv_impl == "xla"
        assert out.count(fallback) == 1, out[-3000:]
    for name in ("config.json", "data_split.json", "metrics.jsonl", "eval_validation.json"):
        assert (run / name).is_file(), name
    assert os.listdir(run / "predictions")
    # Nothing is written into the installed package.
    assert not glob.glob(os.path.join(site, "bts_jax", "**", "run"), recursive=True)

    out = _run(["bts-evaluate", "--workdir", "run"], cwd, env)
    assert "best checkpoint of run on validation" in out
    sample = os.path.join(site, "bts_jax", "data", "sample", "images")
    out = _run(
        ["bts-predict", "--workdir", "run", "--inputs", sample, "--output_dir", "masks"], cwd, env
    )
    assert "Wrote 60 masks and 60 overlays" in out
    assert len(glob.glob(str(cwd / "masks" / "*_mask.png"))) == 60
    out = _run(["bts-export", "--workdir", "run", "--output", "exported"], cwd, env)
    for name in ("model.jax_export", "preprocessing.json", "saved_model"):
        assert (cwd / "exported" / name).exists(), name
    out = _run(
        [
            "bts-compare",
            "--workdir_a",
            "run",
            "--workdir_b",
            "run",
            "--output",
            "c.png",
            "--num_images",
            "2",
        ],
        cwd,
        env,
    )
    assert (cwd / "c.png").is_file()
    for command in ("bts-sweep", "bts-report"):
        assert "USAGE" in _run([command, "--help"], cwd, env).upper()
    # The program's own flags, not only absl's one-line usage.
    assert "--workdir" in _run(["bts-sweep", "--help"], cwd, env)
