"""Where a sweep's cells ran: their environments side by side, and what differs between them.

Each run records its environment (`bts_jax.workdir.environment`: versions, devices, XLA flags,
code, data fingerprints). A report lists the distinct environments of its cells, and warns when
cells differ in versions, devices, flags or data, or ran different code: figures compared across
such cells may differ for reasons other than the variants.
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
    """One environment record in a line: versions, devices, XLA flags, code, data fingerprints."""
    versions = ", ".join(f"{k} {v}" for k, v in sorted(record.get("versions", {}).items()))
    devices = record.get("devices", {})
    kinds = ", ".join(devices.get("kinds", [])) or "unknown devices"
    flags = record.get("xla_flags") or "none"
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
        name = f"{run.variant}/seed_{run.seed}" + ("" if run.fold is None else f"/fold_{run.fold}")
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
