"""Every benchmark script runs as the README shows it, from the repository root, for a tiny step."""

import os
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

COMMANDS = {
    "train_throughput": [
        "benchmarks/train_throughput.py",
        "--config",
        "configs/test.py",
        "--steps=2",
        "--warmup=1",
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
        "--image_size=32",
        "--num_seeds=1,2",
        "--steps=2",
        "--warmup=1",
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
    "model_stats": "| test |",
    "seeds_throughput": "| 2 |",
    "input_pipeline": "cache on, later epochs",
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
