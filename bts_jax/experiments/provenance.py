"""Where a sweep's cells ran: their environments side by side, and what differs between them.

Each run records its environment (`bts_jax.workdir.environment`: versions, devices, XLA flags,
code, data fingerprints). A report lists the distinct environments of its cells, and warns when
cells differ in versions, devices, flags or data, or ran different code: figures compared across
such cells may differ for reasons other than the variants. A sweep scored on an external test
folder also checks that every cell was scored on the same images, and that the folder still holds
them (`test_images`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from bts_jax.experiments.results import Run
from bts_jax.workdir.environment import differences


def _code(record: dict[str, Any]) -> str:
    code = record.get("code", {})
    if "git_commit" in code:
        return code["git_commit"][:12] + (" (uncommitted changes)" if code.get("git_dirty") else "")
    return f"installed version {code.get('installed_version')}"


def describe(record: dict[str, Any]) -> str:
    """One environment record in a line: versions, devices and CPU, XLA flags, code, data."""
    versions = ", ".join(f"{k} {v}" for k, v in sorted(record.get("versions", {}).items()))
    devices = record.get("devices", {})
    kinds = ", ".join(devices.get("kinds", [])) or "unknown devices"
    flags = record.get("xla_flags") or "none"
    # XLA:CPU's kernels, so its rounding, depend on the CPU model; records before it say nothing.
    cpu = (record.get("cpu") or {}).get("model")
    kinds += f" ({cpu})" if cpu else ""
    data = record.get("data", {})
    fingerprints = ", ".join(
        f"{name} {data[name]['examples']} images ({data[name]['sha256'][:12]})"
        for name in ("source", "test")
        if name in data
    )
    return (
        f"Python {record.get('python')}; {versions}; {devices.get('count')} x {kinds}; "
        f"XLA_FLAGS: {flags}; code {_code(record)}; data: {fingerprints or 'unknown'}"
    )


def describe_images(fingerprint: dict[str, Any]) -> str:
    """A data fingerprint in a few words: ``"310 images, 1,234 bytes (sha256 prefix)"``."""
    return (
        f"{fingerprint['examples']} images, {fingerprint['bytes']:,} bytes "
        f"({fingerprint['sha256'][:12]})"
    )


def test_images(runs: Sequence[Run], now: dict[str, Any] | None) -> dict[str, Any]:
    """Which external test images the cells were scored on, and whether the folder still holds them.

    Args:
      runs: the finished runs (their ``test_data``: the fingerprint recorded when scored).
      now: the fingerprint of the sweep's test images as the folder holds them now
        (`bts_jax.experiments.cells.test_data_fingerprint`), or None if it cannot be read.

    Returns:
      ``{"recorded": [{"description", "runs": [cell names]}], "unrecorded": [cell names],
      "now": description or None, "warnings": [lines]}``: a warning when cells were scored on
      different images, or on images other than the folder's now.
    """
    groups: dict[str, list[str]] = {}
    unrecorded = []
    for run in runs:
        if run.test_data is None:
            unrecorded.append(run.name)
        else:
            groups.setdefault(describe_images(run.test_data), []).append(run.name)
    now_text = None if now is None else describe_images(now)
    warnings = []
    if len(groups) > 1:
        warnings.append(
            "the cells were scored on different test images: "
            + "; ".join(f"{', '.join(names)}: {text}" for text, names in groups.items())
        )
    if now_text is not None and any(text != now_text for text in groups):
        warnings.append(f"the test folder has changed since scoring: it now holds {now_text}")
    return {
        "recorded": [{"description": t, "runs": names} for t, names in groups.items()],
        "unrecorded": unrecorded,
        "now": now_text,
        "warnings": warnings,
    }


def environments(runs: Sequence[Run]) -> dict[str, Any]:
    """The distinct environments of a sweep's runs, and warnings where they differ.

    Args:
      runs: the finished runs.

    Returns:
      ``{"environments": [{"description", "runs": [cell names]}], "missing": [cell names
      without an environment record], "warnings": [lines]}``.
    """
    groups: dict[str, list[str]] = {}
    records: dict[str, dict[str, Any]] = {}
    missing = []
    for run in runs:
        name = run.name
        if run.environment is None:
            missing.append(name)
            continue
        text = describe(run.environment)
        groups.setdefault(text, []).append(name)
        records.setdefault(text, run.environment)
    warnings = []
    first = next(iter(records.values()), None)
    for text, record in records.items():
        found = differences(first, record)
        if _code(first) != _code(record):
            found.append(f"code: {_code(first)} vs {_code(record)}")
        if found:
            warnings.append(
                f"{', '.join(groups[text])} differ from {groups[next(iter(groups))][0]}: "
                + "; ".join(found)
            )
    return {
        "environments": [{"description": t, "runs": names} for t, names in groups.items()],
        "missing": missing,
        "warnings": warnings,
    }
