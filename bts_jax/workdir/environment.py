"""Where a run ran: ``environment.json`` with versions, devices, flags, code and data.

A figure is only as good as the record of what produced it. Every (re)start of a run appends one
record: the versions of Python and the core libraries, the devices (kinds and count) and
processes, ``XLA_FLAGS``, the code (the git commit and whether the tree was dirty, or the
installed version outside a checkout), and a fingerprint of the data: per split, the number of
files, their total size and a SHA-256 over their names and sizes (reading names and sizes only,
so it costs nothing on large datasets). `differences` names what two records disagree on; the
sweep report uses it to warn when its cells ran in different environments or on different data.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import os
import platform
import subprocess
import sys
from collections.abc import Mapping, Sequence
from typing import Any

from bts_jax import jsonio
from bts_jax.workdir.layout import ENVIRONMENT_FILE

# Distributions whose versions decide a run's numbers.
PACKAGES = (
    "jax",
    "jaxlib",
    "flax",
    "optax",
    "orbax-checkpoint",
    "tensorflow",
    "tensorflow-cpu",
    "numpy",
    "onednn-cpu-gomp",
    "bts_jax",
)
# The parts of a record that must agree for two runs to be comparable, and their names.
COMPARED = {"versions": "versions", "devices": "devices", "xla_flags": "XLA flags", "data": "data"}
# The data every cell of a sweep shares: the whole source and the fixed test split (train and
# validation differ between folds, and between seeds of a random split, by design).
SHARED_DATA = ("source", "test")


def _version(package: str) -> str | None:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return None


def code_version(path: str | None = None) -> dict[str, Any]:
    """The code a run used: its git commit and whether the tree was dirty, or the installed version.

    Args:
      path: a folder inside the checkout; default the folder of the bts_jax package.

    Returns:
      ``{"git_commit", "git_dirty"}`` in a git checkout, else ``{"installed_version"}``.
    """
    path = path or os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

    def git(*args: str) -> str | None:
        try:
            done = subprocess.run(
                ["git", "-C", path, *args], capture_output=True, text=True, timeout=10
            )
        except (OSError, subprocess.TimeoutExpired):
            return None
        return done.stdout.strip() if done.returncode == 0 else None

    commit = git("rev-parse", "HEAD")
    if commit is None:
        return {"installed_version": _version("bts_jax")}
    return {"git_commit": commit, "git_dirty": bool(git("status", "--porcelain"))}


def cpu_description(cpuinfo: str = "/proc/cpuinfo") -> dict[str, Any]:
    """The host's CPU: its model name, family and model numbers, and logical core count.

    XLA:CPU and oneDNN pick their kernels by the instruction sets they find, so the same program
    can round differently on another CPU generation: the record says which one a run trained on.
    The model name alone may not tell (two EPYC generations both read "AMD EPYC" on some hosts,
    and trained the paper model differently: docs/results.md); the family and model numbers do.

    Args:
      cpuinfo: Linux's CPU description file (elsewhere `platform.processor()` is used).

    Returns:
      ``{"model", "cores"}`` (``model`` empty when nothing names it), plus ``"family"`` and
      ``"model_number"`` (as the file writes them) where the file gives them.
    """
    fields = {"model name": "model", "cpu family": "family", "model": "model_number"}
    found: dict[str, str] = {}
    if os.path.isfile(cpuinfo):
        with open(cpuinfo, errors="replace") as f:
            for line in f:
                if not line.strip():  # The first processor's block is enough.
                    break
                key, _, value = line.partition(":")
                if key.strip() in fields:
                    found.setdefault(fields[key.strip()], value.strip())
    record = {"model": found.pop("model", "") or platform.processor(), "cores": os.cpu_count()}
    return {**record, **found}


def _file_signature(item: Any) -> tuple[str, int]:
    """(name, size) of an example's image or mask: a file path, or encoded bytes (TFDS)."""
    if isinstance(item, bytes):
        return hashlib.sha256(item).hexdigest()[:16], len(item)
    return os.path.basename(item), os.path.getsize(item)


def data_fingerprint(splits: Mapping[str, Sequence[Any]]) -> dict[str, dict[str, Any]]:
    """Per split: the number of examples, the bytes of their files, a hash of names and sizes.

    Args:
      splits: split name -> its examples (`bts_jax.data.Example`: ``id``, ``image``, ``mask``).

    Returns:
      split -> ``{"examples", "bytes", "sha256"}``.
    """
    fingerprint = {}
    for name, examples in splits.items():
        digest = hashlib.sha256()
        total = 0
        for example in examples:
            for item in (example.image, example.mask):
                file_name, size = _file_signature(item)
                digest.update(f"{example.id}\t{file_name}\t{size}\n".encode())
                total += size
        fingerprint[name] = {
            "examples": len(examples),
            "bytes": total,
            "sha256": digest.hexdigest(),
        }
    return fingerprint


def environment_record(
    splits: Mapping[str, Sequence[Any]], *, step: int, devices: Sequence[Any] | None = None
) -> dict[str, Any]:
    """What `write_environment` records of this process's environment.

    Args:
      splits: name -> examples, for the data fingerprint: ``"source"`` (every example of the
        data source) and each split.
      step: the step the run starts from (0 for a new run).
      devices: the run's devices; default all of JAX's.

    Returns:
      ``{"step", "python", "platform", "cpu", "versions", "devices", "process_count",
      "xla_flags", "code", "data"}`` (``cpu``: `cpu_description`; recorded, not compared).
    """
    import jax

    devices = list(devices if devices is not None else jax.devices())
    kinds = sorted({f"{d.platform}:{d.device_kind}" for d in devices})
    return {
        "step": int(step),
        "python": platform.python_version(),
        "platform": f"{sys.platform} {platform.machine()}",
        "cpu": cpu_description(),
        "versions": {name: v for name in PACKAGES if (v := _version(name)) is not None},
        "devices": {"kinds": kinds, "count": len(devices)},
        "process_count": jax.process_count(),
        "xla_flags": os.environ.get("XLA_FLAGS", ""),
        "code": code_version(),
        "data": data_fingerprint(splits),
    }


def read_environment(workdir: str | os.PathLike) -> list[dict[str, Any]]:
    """The records of ``<workdir>/environment.json``, oldest first (empty when there is none)."""
    path = os.path.join(os.fspath(workdir), ENVIRONMENT_FILE)
    return list(jsonio.read_json(path)["runs"]) if os.path.isfile(path) else []


def write_environment(workdir: str | os.PathLike, record: Mapping[str, Any]) -> str:
    """Appends ``record`` to ``<workdir>/environment.json`` (one per start of the run).

    Args:
      workdir: the run's folder.
      record: from `environment_record`.

    Returns:
      The file's path.
    """
    runs = read_environment(workdir) + [dict(record)]
    return jsonio.write_json(
        os.path.join(os.fspath(workdir), ENVIRONMENT_FILE), {"runs": runs}, indent=1
    )


def differences(a: Mapping[str, Any], b: Mapping[str, Any]) -> list[str]:
    """What two environment records disagree on, as readable lines (empty when they agree).

    Compares `COMPARED`: versions, devices, XLA flags and the data fingerprints of `SHARED_DATA`
    (the whole source and the test split); not the step or the code.

    Args:
      a: a record.
      b: another.

    Returns:
      One line per difference, e.g. ``"versions.jax: 0.10.2 vs 0.10.3"``.
    """
    found = []
    for key, label in COMPARED.items():
        left, right = a.get(key), b.get(key)
        if isinstance(left, Mapping) and isinstance(right, Mapping):
            fields = set(left) | set(right)
            if key == "data":
                fields &= set(SHARED_DATA)
            for field in sorted(fields):
                if left.get(field) != right.get(field):
                    found.append(f"{label}.{field}: {left.get(field)} vs {right.get(field)}")
        elif left != right:
            found.append(f"{label}: {left!r} vs {right!r}")
    return found
