import jax
import pytest

from bts_jax.cli import distributed


@pytest.mark.parametrize(
    "environ,expected",
    [
        ({}, False),
        ({"SLURM_NTASKS": "1"}, False),
        ({"SLURM_NTASKS": "4"}, True),
        ({"OMPI_COMM_WORLD_SIZE": "2"}, True),
        ({"JAX_COORDINATOR_ADDRESS": "10.0.0.1:1234"}, True),
        ({"JAX_NUM_PROCESSES": ""}, False),
    ],
)
def test_cluster_detected(environ, expected):
    assert distributed.cluster_detected(environ) is expected


def test_single_process_needs_no_initialisation(monkeypatch):
    for name in ("SLURM_NTASKS", "OMPI_COMM_WORLD_SIZE", "JAX_NUM_PROCESSES"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.delenv("JAX_COORDINATOR_ADDRESS", raising=False)
    assert distributed.initialize() is False


@pytest.mark.parametrize(
    "args,message",
    [
        (("127.0.0.1:1234", None, None), r"missing \['--num_processes', '--process_id'\]"),
        ((None, 2, 0), r"missing \['--coordinator_address'\]"),
        (("127.0.0.1:1234", 2, 2), r"--process_id=2 must be in \[0, 2\)"),
    ],
)
def test_partial_or_inconsistent_flags_are_rejected(args, message):
    with pytest.raises(ValueError, match=message):
        distributed.initialize(*args)


def test_timeouts_are_passed_to_jax_explicitly(monkeypatch):
    calls = []
    monkeypatch.setattr(jax.distributed, "initialize", lambda *a, **k: calls.append(k))
    monkeypatch.setattr(distributed, "_use_gloo_on_cpu", lambda: None)
    assert distributed.initialize("127.0.0.1:1234", 2, 1, heartbeat_timeout_s=7)
    assert calls == [
        {
            "initialization_timeout": distributed.DEFAULT_INITIALIZATION_TIMEOUT_S,
            "heartbeat_timeout_seconds": 7,
            "shutdown_timeout_seconds": distributed.DEFAULT_SHUTDOWN_TIMEOUT_S,
        }
    ]
    with pytest.raises(ValueError, match="--heartbeat_timeout_s=0 must be >= 1 second"):
        distributed.initialize("127.0.0.1:1234", 2, 1, heartbeat_timeout_s=0)
