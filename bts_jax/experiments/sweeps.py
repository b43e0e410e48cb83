"""A sweep's definition and its folder: the one schema, validated once, and where each cell lives.

A sweep definition (``configs/sweeps/*.py``) names a base experiment config, overrides shared by
every cell, the variants (each a few more overrides), the seeds and optionally the folds. It is
checked by `parse_sweep` (every error names the ``sweep.`` field) and written to the sweep folder
as ``sweep.json``, which `load_sweep` reads back through the very same checks (errors name the
file and the field). Each cell (variant, seed[, fold]) is an ordinary training run in
`cell_dir`, with a ``cell.json`` that says whether it finished.
"""

from __future__ import annotations

import copy
import dataclasses
import os
from collections.abc import Mapping
from typing import Any

import ml_collections

from bts_jax import jsonio
from bts_jax.config_tools import apply_overrides, flatten

SWEEP_FILE = "sweep.json"
CELL_FILE = "cell.json"
REPRODUCIBILITY_FILE = "reproducibility.json"  # `bts_jax.experiments.cells.reproduce`
# Cells retrained by other code and compared (`bts_jax.experiments.provenance.add_code_check`).
CODE_CHECKS_FILE = "code_checks.json"
# The evaluation of a cell on the sweep's test folder: eval_external_test.json and its CSV.
EXTERNAL_TEST = "external_test"
# What a report may score: the cells' own test split, or (to choose a recipe without looking at
# any test image) their validation split.
SCORE_SPLITS = ("test", "validation")


@dataclasses.dataclass(frozen=True)
class SweepDefinition:
    """A checked sweep definition.

    Attributes:
      name: the sweep's name.
      base_config: the base config file, relative to the repository root.
      overrides: flat overrides applied to every cell.
      variants: variant name -> its flat overrides (applied after ``overrides``), in order.
      baseline: the variant every other is compared with.
      paper_model: the variant the paper's claims are about, or None.
      seeds: the seeds.
      folds: the folds, or None.
      devices_per_run: devices of one cell (0 = all devices, cells one after another).
      test_folder: a labelled folder every cell is also scored on, at each image's own size, as
        the report's test set (``None``: the cells' own test split).
      test_heldout_fraction: with ``test_folder``, score only the last fraction of each tumour
        type's ids minus the bundled samples' ids (`bts_jax.data.splits.heldout_block`); 0 = all.
      variant_seeds: variant -> its own seeds, for variants run with fewer (or other) seeds than
        ``seeds``; comparisons pair the seeds two variants share.
      score_split: "test" (the test folder if set, else the cells' test split) or "validation":
        the report scores the cells' validation split (a study that chooses a recipe; it cannot
        have a test folder, so no test image is read).
    """

    name: str
    base_config: str
    overrides: dict[str, Any]
    variants: dict[str, dict[str, Any]]
    baseline: str
    paper_model: str | None
    seeds: tuple[int, ...]
    folds: tuple[int, ...] | None
    devices_per_run: int = 0
    test_folder: str | None = None
    test_heldout_fraction: float = 0.0
    variant_seeds: dict[str, tuple[int, ...]] = dataclasses.field(default_factory=dict)
    score_split: str = "test"

    def seeds_of(self, variant: str) -> tuple[int, ...]:
        """The seeds a variant runs: its own (``variant_seeds``) or the sweep's."""
        return self.variant_seeds.get(variant, self.seeds)

    @property
    def test_split(self) -> str:
        """The evaluation the report scores: "external_test", "test" or "validation"."""
        if self.score_split == "validation":
            return "validation"
        return EXTERNAL_TEST if self.test_folder else "test"

    @property
    def scored_title(self) -> str:
        """The report's name for the split it scores: "Validation" or "Test"."""
        return "Validation" if self.score_split == "validation" else "Test"

    def to_json(self) -> dict[str, Any]:
        """The ``sweep.json`` content (what `load_sweep` reads)."""
        return {
            "name": self.name,
            "base_config": self.base_config,
            "overrides": self.overrides,
            "variants": self.variants,
            "baseline": self.baseline,
            "paper_model": self.paper_model,
            "seeds": list(self.seeds),
            "folds": None if self.folds is None else list(self.folds),
            "test_folder": self.test_folder,
            "test_heldout_fraction": self.test_heldout_fraction,
            "variant_seeds": {name: list(seeds) for name, seeds in self.variant_seeds.items()},
            "score_split": self.score_split,
        }


@dataclasses.dataclass(frozen=True)
class Cell:
    """One training run of a sweep.

    Attributes:
      variant: the variant's name.
      seed: ``config.seed`` of the run.
      fold: ``config.data.fold`` of the run, or None for a sweep without folds.
      workdir: the run's folder.
    """

    variant: str
    seed: int
    fold: int | None
    workdir: str

    @property
    def name(self) -> str:
        """``variant/seed_n`` or ``variant/fold_k/seed_n``."""
        fold = "" if self.fold is None else f"fold_{self.fold}/"
        return f"{self.variant}/{fold}seed_{self.seed}"


def _flat_overrides(value: Any, where: str) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, Mapping | ml_collections.ConfigDict):
        raise ValueError(f"{where} must map config fields to values, got {value!r}.")
    return flatten(value)


def _int_tuple(value: Any, where: str) -> tuple[int, ...]:
    values = tuple(value) if isinstance(value, list | tuple) else None
    if not values or not all(isinstance(v, int) and not isinstance(v, bool) for v in values):
        raise ValueError(f"{where} must be a non-empty list of integers, got {value!r}.")
    if len(set(values)) != len(values):
        raise ValueError(f"{where} has repeated entries: {list(values)}.")
    return values


class _FieldNames:
    """How errors name the fields of a definition: in a sweep config, or in a ``sweep.json``."""

    def __init__(self, path: str | None = None):
        self.path = path

    def field(self, name: str) -> str:
        """``sweep.seeds``, or ``<path>: 'seeds'``."""
        return f"sweep.{name}" if self.path is None else f"{self.path}: {name!r}"

    def setting(self, name: str, value: Any) -> str:
        """``sweep.baseline='resnet'``, or ``<path>: baseline='resnet'``."""
        prefix = "sweep." if self.path is None else f"{self.path}: "
        return f"{prefix}{name}={value!r}"


def _validated(fields: Mapping[str, Any], names: _FieldNames) -> SweepDefinition:
    """The one check of a sweep definition, whether it comes from a config or from sweep.json.

    Args:
      fields: the definition's fields (a sweep ConfigDict or the parsed ``sweep.json``).
      names: how an error names a field.

    Returns:
      The `SweepDefinition`.

    Raises:
      ValueError: a missing or invalid field, named.
    """
    for field in ("name", "base_config", "variants", "baseline", "seeds"):
        if field not in fields:
            raise ValueError(f"The sweep definition has no {field!r} field ({names.field(field)}).")
    variants = fields["variants"]
    if not isinstance(variants, Mapping | ml_collections.ConfigDict) or not variants:
        raise ValueError(
            f"{names.field('variants')} must map at least one variant name to its overrides."
        )
    for name in variants:
        if not name or "/" in name or name.startswith(("seed_", "fold_", ".")):
            raise ValueError(
                f"{names.field('variants')}: {name!r} cannot be a folder name of a variant."
            )
    parsed_variants = {
        name: _flat_overrides(value, f"{names.field('variants')}.{name}")
        for name, value in variants.items()
    }
    for field in ("baseline", "paper_model"):
        chosen = fields.get(field) or None
        if (field == "baseline" or chosen is not None) and chosen not in parsed_variants:
            raise ValueError(
                f"{names.setting(field, chosen)} is not one of the variants "
                f"{sorted(parsed_variants)}."
            )
    folds = fields.get("folds") or None
    devices_per_run = int(fields.get("devices_per_run", 0) or 0)
    if devices_per_run < 0:
        raise ValueError(
            f"{names.setting('devices_per_run', devices_per_run)} must be >= 0 (0 = all)."
        )
    test_folder = fields.get("test_folder") or None
    if test_folder is not None and not isinstance(test_folder, str):
        raise ValueError(f"{names.setting('test_folder', test_folder)} must be a folder path.")
    fraction = float(fields.get("test_heldout_fraction") or 0.0)
    if not 0.0 <= fraction < 1.0 or (fraction and not test_folder):
        raise ValueError(
            f"{names.setting('test_heldout_fraction', fraction)} must lie in [0, 1) and needs "
            f"{names.field('test_folder')}."
        )
    score_split = fields.get("score_split") or "test"
    if score_split not in SCORE_SPLITS or (score_split == "validation" and test_folder):
        raise ValueError(
            f"{names.setting('score_split', score_split)} must be one of {list(SCORE_SPLITS)}; "
            f"'validation' scores no test image, so it cannot go with {names.field('test_folder')}."
        )
    own_seeds = fields.get("variant_seeds") or {}
    if not isinstance(own_seeds, Mapping | ml_collections.ConfigDict):
        raise ValueError(f"{names.field('variant_seeds')} must map variant names to seeds.")
    unknown = sorted(set(own_seeds) - set(parsed_variants))
    if unknown:
        raise ValueError(
            f"{names.field('variant_seeds')} names {unknown}, which are not variants "
            f"({sorted(parsed_variants)})."
        )
    return SweepDefinition(
        name=str(fields["name"]),
        base_config=str(fields["base_config"]),
        overrides=_flat_overrides(fields.get("overrides"), names.field("overrides")),
        variants=parsed_variants,
        baseline=fields["baseline"],
        paper_model=fields.get("paper_model") or None,
        seeds=_int_tuple(fields["seeds"], names.field("seeds")),
        folds=_int_tuple(folds, names.field("folds")) if folds else None,
        devices_per_run=devices_per_run,
        test_folder=test_folder,
        test_heldout_fraction=fraction,
        variant_seeds={
            name: _int_tuple(seeds, f"{names.field('variant_seeds')}.{name}")
            for name, seeds in own_seeds.items()
        },
        score_split=score_split,
    )


def parse_sweep(sweep: ml_collections.ConfigDict) -> SweepDefinition:
    """Checks a sweep config (``configs/sweeps/*.py``); every error names the ``sweep.`` field.

    Args:
      sweep: the sweep's ConfigDict: ``name``, ``base_config``, ``overrides`` (nested fields),
        ``variants`` (name -> nested fields), ``baseline``, ``paper_model`` (or ""), ``seeds``,
        ``folds`` (or empty), ``devices_per_run``; optionally ``test_folder``,
        ``test_heldout_fraction``, ``variant_seeds`` and ``score_split``.

    Returns:
      The `SweepDefinition`.

    Raises:
      ValueError: a missing or invalid field.
    """
    return _validated(sweep, _FieldNames())


def load_sweep(directory: str | os.PathLike) -> SweepDefinition:
    """Reads and checks ``<directory>/sweep.json`` (the checks of `parse_sweep`).

    Args:
      directory: the sweep folder.

    Returns:
      The `SweepDefinition`.

    Raises:
      FileNotFoundError: there is no ``sweep.json``.
      ValueError: a field is missing or invalid (the message names the file and the field).
    """
    path = os.path.join(os.fspath(directory), SWEEP_FILE)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{directory} is not a sweep folder: it has no {SWEEP_FILE}.")
    return _validated(jsonio.read_json(path), _FieldNames(path))


def write_sweep(definition: SweepDefinition, directory: str | os.PathLike) -> str:
    """Writes ``<directory>/sweep.json`` (created if needed); returns its path."""
    os.makedirs(directory, exist_ok=True)
    return jsonio.write_json(
        os.path.join(os.fspath(directory), SWEEP_FILE), definition.to_json(), indent=1
    )


def cell_dir(directory: str, variant: str, seed: int, fold: int | None = None) -> str:
    """The folder of one cell: ``DIR/<variant>/seed_<n>`` or ``DIR/<variant>/fold_<k>/seed_<n>``.

    Args:
      directory: the sweep folder.
      variant: the variant's name.
      seed: the seed.
      fold: the fold, or None for a sweep without folds.

    Returns:
      The cell's path.
    """
    parts = [directory, variant] + ([] if fold is None else [f"fold_{fold}"])
    return os.path.join(*parts, f"seed_{seed}")


def expand_cells(definition: SweepDefinition, directory: str) -> list[Cell]:
    """Every cell of a sweep, variant by variant, then fold, then seed.

    Args:
      definition: the sweep.
      directory: the sweep folder.

    Returns:
      The cells.
    """
    folds = definition.folds if definition.folds is not None else (None,)
    return [
        Cell(variant, seed, fold, cell_dir(directory, variant, seed, fold))
        for variant in definition.variants
        for fold in folds
        for seed in definition.seeds_of(variant)
    ]


def cell_config(
    definition: SweepDefinition, base: ml_collections.ConfigDict, cell: Cell
) -> ml_collections.ConfigDict:
    """The full experiment config of one cell: base, shared overrides, variant, seed, fold.

    Args:
      definition: the sweep.
      base: the base config (from ``definition.base_config``).
      cell: the cell.

    Returns:
      The cell's config.
    """
    config = apply_overrides(base, definition.overrides, "sweep.overrides")
    config = apply_overrides(
        config, definition.variants[cell.variant], f"sweep.variants.{cell.variant}"
    )
    config = copy.deepcopy(config)
    config.seed = cell.seed
    if cell.fold is not None:
        config.data.split_method = "kfold"
        config.data.fold = cell.fold
    return config


def read_cell_status(workdir: str | os.PathLike) -> dict[str, Any] | None:
    """A cell's ``cell.json`` (``{"status", "wall_s", ...}``), or None when it has none."""
    path = os.path.join(os.fspath(workdir), CELL_FILE)
    return jsonio.read_json(path) if os.path.isfile(path) else None


def write_cell_status(workdir: str | os.PathLike, record: Mapping[str, Any]) -> str:
    """Writes a cell's ``cell.json`` atomically; returns its path."""
    return jsonio.write_json(os.path.join(os.fspath(workdir), CELL_FILE), dict(record), indent=1)


def is_done(cell: Cell) -> bool:
    """Whether a cell finished (its ``cell.json`` says ``"status": "done"``)."""
    status = read_cell_status(cell.workdir)
    return status is not None and status.get("status") == "done"
