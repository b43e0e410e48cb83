"""The docs name what exists: each ``bts_jax.…`` name in README.md and docs/*.md imports."""

import importlib
import pathlib
import re
import types

ROOT = pathlib.Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
# A dotted name in backquotes, optionally called: `bts_jax.models.interop.nnx.UNet`, `f()`.
NAME = re.compile(r"`(bts_jax(?:\.[A-Za-z_]\w*)+)(?:\(\))?`")


def documented_names(text: str) -> set[str]:
    """The ``bts_jax.…`` names a Markdown text names in backquotes.

    Args:
      text: the Markdown.

    Returns:
      The dotted names.
    """
    return set(NAME.findall(text))


def unresolved(name: str) -> str | None:
    """Why ``name`` cannot be used as written, or None when it can.

    The longest prefix that ``import`` accepts is imported and the rest looked up as attributes;
    an attribute that is a module under another name (one a package hands out lazily, say) does not
    count, since ``import name`` would fail.

    Args:
      name: a dotted name, e.g. ``bts_jax.models.interop.nnx.UNet``.

    Returns:
      The reason, or None.
    """
    parts = name.split(".")
    for end in range(len(parts), 0, -1):
        try:
            found = importlib.import_module(".".join(parts[:end]))
            break
        except ModuleNotFoundError:
            continue
    for i in range(end, len(parts)):
        if not hasattr(found, parts[i]):
            return f"{'.'.join(parts[:i])} has no {parts[i]}"
        found = getattr(found, parts[i])
        written = ".".join(parts[: i + 1])
        if isinstance(found, types.ModuleType) and found.__name__ != written:
            return f"{written} is the module {found.__name__}: import {written} fails"
    return None


def test_documented_names_are_found_and_checked():
    assert documented_names("`bts_jax.jsonio.write_json()` and `bts_jax.train` but not bts_x") == {
        "bts_jax.jsonio.write_json",
        "bts_jax.train",
    }
    assert unresolved("bts_jax.jsonio.write_json") is None
    assert unresolved("bts_jax.jsonio.no_such_name") == "bts_jax.jsonio has no no_such_name"
    # The NNX module lives in interop/; the package also hands it out lazily as models.nnx.
    assert "import bts_jax.models.nnx fails" in unresolved("bts_jax.models.nnx.UNet")


def test_every_documented_name_imports_as_written():
    problems = {
        f"{path.relative_to(ROOT)}: {name}": unresolved(name)
        for path in DOCS
        for name in sorted(documented_names(path.read_text()))
        if unresolved(name)
    }
    assert problems == {}
