"""The package's structure: imports go one way through its layers, and modules stay small."""

import ast
import pathlib
import re

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "bts_jax"

# Lower layers never import higher ones (docs/architecture.md), and the parts of one layer do not
# import each other.
LAYERS = [
    {"naming"},
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


# ----------------------------------------------------------------------------- no cycles


def _module_name(path: pathlib.Path) -> str:
    """``bts_jax.train.seeds`` for ``bts_jax/train/seeds.py``; a package for its ``__init__``."""
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported_modules(source: str, known: set[str]) -> set[str]:
    """The modules of ``known`` that ``source`` imports, lazy and ``TYPE_CHECKING`` ones included.

    ``from a.b import c`` imports ``a.b.c`` when that is a module, else ``a.b`` (``c`` is a name).

    Args:
      source: a module's text.
      known: dotted names of every module (packages by their own name).

    Returns:
      The dotted names imported.
    """
    found = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            for alias in node.names:
                child = f"{node.module}.{alias.name}"
                found.add(child if child in known else node.module)
        elif isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
    return found & known


def import_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The cycles of a module graph: one per strongly connected group of two or more modules.

    Args:
      graph: module -> the modules it imports.

    Returns:
      Each cycle's modules, sorted; an empty list when imports go one way.
    """
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    cycles = []

    def visit(node: str) -> None:  # Tarjan's algorithm; the graphs are a few dozen modules.
        index[node] = low[node] = len(index)
        stack.append(node)
        for target in graph.get(node, ()):
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            group = []
            while True:
                member = stack.pop()
                group.append(member)
                if member == node:
                    break
            if len(group) > 1 or node in graph.get(node, ()):
                cycles.append(sorted(group))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return cycles


def test_import_cycles_finds_a_cycle_and_only_cycles():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert import_cycles(graph) == [["a", "b", "c"]]
    assert import_cycles({"a": {"b"}, "b": set()}) == []
    # A lazy import inside a function and a typing-only one count as imports.
    source = (
        "from typing import TYPE_CHECKING\n"
        "if TYPE_CHECKING:\n    from p import b\n"
        "def f():\n    from p.c import name\n"
    )
    assert imported_modules(source, {"p", "p.b", "p.c"}) == {"p.b", "p.c"}


def test_no_import_cycles_within_a_package():
    paths = {_module_name(p): p for p in _modules()}
    known = set(paths)
    graph = {}
    for name, path in paths.items():
        package = name.split(".")[1] if "." in name else name
        graph[name] = {
            target
            for target in imported_modules(path.read_text(), known)
            if target != name and target.split(".")[1:2] == [package]
        }
    assert import_cycles(graph) == []


# ----------------------------------------------------------------------------- files in one place

BENCHMARKS = ROOT / "benchmarks"


def json_writes(source: str) -> list[int]:
    """Lines of ``source`` that make JSON text with the ``json`` module (``dump``, ``dumps``).

    Args:
      source: a module's text.

    Returns:
      The line numbers, in order.
    """
    lines = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.ImportFrom) and node.module == "json":
            if {a.name for a in node.names} & {"dump", "dumps"}:
                lines.append(node.lineno)
        elif (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute)
            and isinstance(node.func.value, ast.Name)
            and node.func.value.id == "json"
            and node.func.attr in ("dump", "dumps")
        ):
            lines.append(node.lineno)
    return sorted(lines)


def test_json_writes_finds_every_way_to_write_json():
    source = (
        "import json\nfrom json import dumps\njson.dump(x, f)\ntext = json.dumps(x)\njson.load(f)\n"
    )
    assert json_writes(source) == [2, 3, 4]


def test_json_is_written_only_through_jsonio():
    # Strict (NaN as null) and atomic: docs/architecture.md, "Where things are written".
    paths = [*_modules(), *sorted(BENCHMARKS.rglob("*.py"))]
    found = {
        str(p.relative_to(ROOT)): json_writes(p.read_text())
        for p in paths
        if p != PACKAGE / "jsonio.py"
    }
    assert {path: lines for path, lines in found.items() if lines} == {}


def _literals(source: str):
    """(line, text) of every string literal but docstrings; an f-string as its constant parts."""
    tree = ast.parse(source)
    docstrings = {
        id(node.body[0].value)
        for node in ast.walk(tree)
        if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef)
        and node.body
        and isinstance(node.body[0], ast.Expr)
        and isinstance(node.body[0].value, ast.Constant)
    }
    parts_of_fstrings = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.JoinedStr):
            pieces = [v.value if isinstance(v, ast.Constant) else "{}" for v in node.values]
            parts_of_fstrings.update(id(v) for v in node.values)
            yield node.lineno, "".join(pieces)
    for node in ast.walk(tree):
        if (
            isinstance(node, ast.Constant)
            and isinstance(node.value, str)
            and id(node) not in docstrings
            and id(node) not in parts_of_fstrings
        ):
            yield node.lineno, node.value


def workdir_file_names(source: str, names: set[str]) -> list[int]:
    """Lines of ``source`` that spell a workdir's file name instead of taking it from the layout.

    Args:
      source: a module's text.
      names: the file names of `bts_jax.workdir.layout` (``config.json``, ``metrics.jsonl``...).

    Returns:
      The line numbers of literals equal to one of ``names`` or shaped like an evaluation file
      (``eval_<split>.json``, ``per_image_<split>.csv``), in order.
    """
    evaluation_file = re.compile(r"^(eval_.+\.json|per_image_.+\.csv)$")
    return sorted(
        line for line, text in _literals(source) if text in names or evaluation_file.match(text)
    )


def _layout_file_names() -> set[str]:
    from bts_jax.workdir import layout

    return {
        value
        for name, value in vars(layout).items()
        if name.isupper() and isinstance(value, str) and "." in value
    }


def test_workdir_file_names_finds_names_spelled_out():
    names = {"config.json", "metrics.jsonl"}
    source = (
        '"""Reads config.json."""\n'
        'a = "config.json"\n'
        'b = f"eval_{split}.json"\n'
        'c = "per_image_test.csv"\n'
        'd = f"{x}/metrics.jsonl"\n'
    )
    assert workdir_file_names(source, names) == [2, 3, 4]


def test_the_file_names_of_a_workdir_are_spelled_only_in_its_layout():
    names = _layout_file_names()
    assert {"config.json", "metrics.jsonl", "data_split.json", ".lock"} <= names
    found = {
        str(p.relative_to(ROOT)): workdir_file_names(p.read_text(), names)
        for p in _modules()
        if p != PACKAGE / "workdir" / "layout.py"
    }
    assert {path: lines for path, lines in found.items() if lines} == {}


# ----------------------------------------------------------------------------- flags once


def flag_definitions(source: str) -> dict[str, set[str]]:
    """Where ``source`` defines absl flags: flag name -> the functions holding the definitions.

    A definition is a call of a ``DEFINE_*`` function (``flags.DEFINE_bool``,
    ``config_flags.DEFINE_config_file``...) whose first argument is the name; one at module level is
    held by ``"<module>"``.

    Args:
      source: a module's text.

    Returns:
      The names, each with the top-level functions (or ``"<module>"``) that define it.
    """
    found: dict[str, set[str]] = {}
    for statement in ast.parse(source).body:
        holder = (
            statement.name
            if isinstance(statement, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef)
            else "<module>"
        )
        for node in ast.walk(statement):
            if (
                isinstance(node, ast.Call)
                and isinstance(node.func, ast.Attribute)
                and node.func.attr.startswith("DEFINE")
                and node.args
                and isinstance(node.args[0], ast.Constant)
            ):
                found.setdefault(node.args[0].value, set()).add(holder)
    return found


def test_flag_definitions_finds_each_definition_and_its_holder():
    source = (
        "from absl import flags\n"
        'flags.DEFINE_string("workdir", None, "h")\n'
        "def define_split():\n"
        '    config_flags.DEFINE_config_file("config", None, "h")\n'
        '    flags.DEFINE_enum("split", "a", ["a"], "h")\n'
    )
    assert flag_definitions(source) == {
        "workdir": {"<module>"},
        "config": {"define_split"},
        "split": {"define_split"},
    }


def test_each_flag_is_defined_in_one_place():
    # Programs and benchmark scripts take shared flags from bts_jax/cli/flags.py and
    # benchmarks/bench_flags.py: one definition, one help text. One define_* function may hold
    # two calls for one name (--workdir as one folder or a list).
    places: dict[str, set[str]] = {}
    for path in [*_modules(), *sorted(BENCHMARKS.glob("*.py"))]:
        for name, holders in flag_definitions(path.read_text()).items():
            where = {f"{path.relative_to(ROOT)}:{holder}" for holder in holders}
            places.setdefault(name, set()).update(where)
    assert {name: sorted(where) for name, where in places.items() if len(where) > 1} == {}
