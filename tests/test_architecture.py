"""The package's structure: imports go one way through its layers, and modules stay small."""

import ast
import pathlib

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "bts_jax"

# Lower layers never import higher ones (docs/architecture.md), and the parts of one layer do not
# import each other.
LAYERS = [
    {"models", "data", "configs", "jsonio", "sharding"},
    {"config_tools"},
    {"workdir"},
    {"evaluation"},
    {"train"},
    {"inference"},
    {"experiments"},
    {"cli"},
]
RANK = {name: rank for rank, names in enumerate(LAYERS) for name in names}
MAX_LINES = 400
MAX_LOOP_LINES = 300


def _modules():
    return sorted(p for p in PACKAGE.rglob("*.py") if "data/sample" not in str(p))


def _part(path: pathlib.Path) -> str:
    """The top-level part of bts_jax a module belongs to ("train", "jsonio", ...)."""
    parts = path.relative_to(PACKAGE).parts
    return parts[0].removesuffix(".py")


def _imported_parts(path: pathlib.Path) -> set[tuple[str, int]]:
    """(part of bts_jax, line) of every import in a module, lazy ones included."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        names = []
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
        elif isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        for name in names:
            parts = name.split(".")
            if parts[0] == "bts_jax" and len(parts) > 1 and parts[1] in RANK:
                found.add((parts[1], node.lineno))
    return found


@pytest.mark.parametrize("path", _modules(), ids=lambda p: str(p.relative_to(ROOT)))
def test_imports_go_down_the_layers(path):
    part = _part(path)
    if part == "__init__":
        return
    upward = [
        f"line {line}: bts_jax.{target}"
        for target, line in _imported_parts(path)
        if RANK[target] > RANK[part] or (RANK[target] == RANK[part] and target != part)
    ]
    assert not upward, f"{path.relative_to(ROOT)} imports a higher layer: {upward}"


def test_the_middle_layer_is_ordered_and_training_never_imports_inference():
    assert RANK["workdir"] < RANK["evaluation"] < RANK["train"] < RANK["inference"]
    for path in (PACKAGE / "train").rglob("*.py"):
        assert "inference" not in {t for t, _ in _imported_parts(path)}, path


def test_modules_stay_within_their_line_budgets():
    sizes = {p.relative_to(ROOT): len(p.read_text().splitlines()) for p in _modules()}
    assert {p: n for p, n in sizes.items() if n > MAX_LINES} == {}
    assert sizes[pathlib.Path("bts_jax/train/loop.py")] < MAX_LOOP_LINES


def test_at_most_four_modules_at_the_top_of_the_package():
    top = sorted(p.name for p in PACKAGE.glob("*.py"))
    assert len(top) <= 4, top


def test_every_part_of_the_package_has_a_layer():
    parts = {_part(p) for p in _modules()} - {"__init__"}
    assert parts <= set(RANK), parts - set(RANK)
