"""Where a sweep's cells ran: their environments side by side, and what differs between them.

Each run records its environment (`bts_jax.workdir.environment`: versions, devices, XLA flags,
code, data fingerprints). A report lists the distinct environments of its cells, and warns when
cells differ in versions, devices, flags or data, or ran different code: figures compared across
such cells may differ for reasons other than the variants. A sweep scored on an external test
folder also checks that every cell was scored on the same images, and that the folder still holds
them (`test_images`).

Cells of one sweep may run from two commits (variants added after the first cells ran) without
a warning only where a code check shows that the later commit trains a kept cell bit for bit as
the earlier one did (``code_checks.json``, written by ``benchmarks/reproduce_kept_cell.py
--record_in``): the report then says which cells ran which code and on what evidence.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

from bts_jax import jsonio
from bts_jax.experiments.results import Run
from bts_jax.experiments.sweeps import CODE_CHECKS_FILE
from bts_jax.workdir.environment import differences, read_environment


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
    cpu = record.get("cpu") or {}
    name = cpu.get("model") or ""
    if "family" in cpu:  # Records before it name the model only.
        name += f", family {cpu['family']} model {cpu.get('model_number', '?')}"
    kinds += f" ({name})" if name else ""
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


def code_check(
    kept: str, rerun: str, cell: str, compared: Sequence[str], found: Sequence[str]
) -> dict[str, Any]:
    """The record of one kept cell retrained by (possibly) other code, for ``code_checks.json``.

    Args:
      kept: the kept cell's folder (its ``environment.json`` names the code it ran).
      rerun: the rerun's folder (likewise).
      cell: the cell's name in its sweep, e.g. ``"today/seed_0"``.
      compared: what was compared, a phrase each.
      found: a line per difference (empty: identical).

    Returns:
      ``{"cell", "kept_code", "rerun_code", "identical", "compared", "differences"}``; the codes
      as the report names them (a commit's first 12 digits, marked when it had uncommitted
      changes).

    Raises:
      ValueError: either folder has no ``environment.json``.
    """
    codes = []
    for folder in (kept, rerun):
        records = read_environment(folder)
        if not records:
            raise ValueError(f"{folder} has no environment.json: it cannot say what code ran it.")
        codes.append(_code(records[-1]))
    return {
        "cell": cell,
        "kept_code": codes[0],
        "rerun_code": codes[1],
        "identical": not found,
        "compared": list(compared),
        "differences": list(found),
    }


def read_code_checks(directory: str | os.PathLike) -> list[dict[str, Any]]:
    """A sweep folder's code checks (`code_check` records, oldest first); [] when it has none."""
    path = os.path.join(directory, CODE_CHECKS_FILE)
    return jsonio.read_json(path) if os.path.isfile(path) else []


def add_code_check(directory: str | os.PathLike, check: dict[str, Any]) -> str:
    """Appends a `code_check` record to a sweep folder's ``code_checks.json``; returns its path."""
    path = os.path.join(directory, CODE_CHECKS_FILE)
    jsonio.write_json(path, [*read_code_checks(directory), check], indent=1)
    return path


def _equivalent_code(checks: Sequence[dict[str, Any]]) -> dict[frozenset[str], dict[str, Any]]:
    """Pairs of committed code versions that a check shows train a cell bit for bit alike."""
    pairs = {}
    for check in checks:
        codes = (check["kept_code"], check["rerun_code"])
        # Uncommitted changes or an installed version do not name code that can be checked out.
        committed = all(" " not in code for code in codes)
        if check["identical"] and committed and codes[0] != codes[1]:
            pairs[frozenset(codes)] = check
    return pairs


def environments(runs: Sequence[Run], code_checks: Sequence[dict[str, Any]] = ()) -> dict[str, Any]:
    """The distinct environments of a sweep's runs, and warnings where they differ.

    Args:
      runs: the finished runs.
      code_checks: the sweep's `read_code_checks`: cells that differ only in their code, from
        code that a check shows trains a cell bit for bit alike, are explained, not warned.

    Returns:
      ``{"environments": [{"description", "runs": [cell names]}], "missing": [cell names
      without an environment record], "warnings": [lines], "explained": [lines]}``.
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
    warnings, explained = [], []
    equivalent = _equivalent_code(code_checks)
    first = next(iter(records.values()), None)
    for text, record in records.items():
        names, reference = ", ".join(groups[text]), groups[next(iter(groups))][0]
        found = differences(first, record)
        codes = (_code(first), _code(record))
        check = equivalent.get(frozenset(codes))
        code_differs = codes[0] != codes[1]
        if code_differs and (check is None or found):
            found.append(f"code: {codes[0]} vs {codes[1]}")
        elif code_differs:
            explained.append(
                f"{names} ran code {codes[1]}, {reference} code {codes[0]}: {check['cell']} "
                f"retrained by {check['rerun_code']} gave bit-identical "
                f"{', '.join(check['compared'])} to the run by {check['kept_code']}"
            )
        if found:
            warnings.append(f"{names} differ from {reference}: " + "; ".join(found))
    return {
        "environments": [{"description": t, "runs": names} for t, names in groups.items()],
        "missing": missing,
        "warnings": warnings,
        "explained": explained,
    }
