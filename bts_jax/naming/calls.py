"""Settings that name a function: ``name``, ``name(arguments)`` or ``package.module:attribute``.

One grammar for every registry a config chooses from by name, in the style of big_vision's
preprocessing strings: losses, optimisers and schedules (`bts_jax.train.registry`), norms
(`bts_jax.models.norms`), augmentation ops (`bts_jax.data.augment_ops`) and blocks
(`bts_jax.models.registry`). Arguments are Python literals (``true`` / ``false`` / ``none`` also
work, for the command line): ``focal(gamma=2)``, ``group(8)``, ``affine(rotate=10,scale=0.1)``.
Each registry adds its own names and its own messages; the errors raised here say what is
malformed, and the caller names the setting.
"""

from __future__ import annotations

import ast
import dataclasses
import functools
import importlib
import re
from typing import Any

NAME = re.compile(r"[a-z][a-z0-9_]*")
IMPORT_PATH = re.compile(r"[A-Za-z_][\w.]*:[A-Za-z_][\w.]*")
_KEYWORD = re.compile(r"\s*[A-Za-z_]\w*\s*")
# The command line cannot type Python's True / False / None easily: accept JSON-style spellings.
_LITERALS = {"true": True, "false": False, "none": None, "null": None}
_DEPTH = {"(": 1, "[": 1, "{": 1, ")": -1, "]": -1, "}": -1}


@dataclasses.dataclass(frozen=True)
class Call:
    """One function named in a setting, with its arguments.

    Attributes:
      name: a registered name or an import path ``package.module:attribute``.
      args: positional arguments, in the order written.
      kwargs: keyword arguments as ``(name, value)`` pairs, in the order written.
    """

    name: str
    args: tuple[Any, ...] = ()
    kwargs: tuple[tuple[str, Any], ...] = ()


def split_top_level(text: str, separator: str) -> list[str]:
    """Splits ``text`` at ``separator`` outside brackets and quoted strings.

    Args:
      text: e.g. ``"focal(gamma=2):1,dice:1"`` or ``"flip|affine(rotate=10)"``.
      separator: one character, e.g. ``","`` or ``"|"``.

    Returns:
      The parts, unstripped, at least one (``[""]`` for ``""``).

    Raises:
      ValueError: an unbalanced bracket or quote.
    """
    parts, depth, start, quote = [], 0, 0, None
    for i, char in enumerate(text):
        if quote:
            quote = None if char == quote else quote
            continue
        if char in "'\"":
            quote = char
            continue
        depth += _DEPTH.get(char, 0)
        if depth < 0:
            raise ValueError(f"unbalanced ')' in {text!r} (brackets '()', '[]', '{{}}' must pair)")
        if char == separator and depth == 0:
            parts.append(text[start:i])
            start = i + 1
    if depth or quote:
        raise ValueError(
            f"unbalanced '(' or quote in {text!r} (brackets '()', '[]', '{{}}' must pair)"
        )
    parts.append(text[start:])
    return parts


def literal(text: str) -> Any:
    """The value of one argument: a Python literal, or true / false / none / null.

    Raises:
      ValueError: ``text`` is not a literal.
    """
    text = text.strip()
    if text.lower() in _LITERALS:
        return _LITERALS[text.lower()]
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
        raise ValueError(
            f"argument {text!r} is not a number, string or true/false (or another literal)"
        ) from None


def parse_arguments(inner: str) -> tuple[tuple[Any, ...], tuple[tuple[str, Any], ...]]:
    """The arguments between the parentheses of ``name(inner)``.

    Args:
      inner: e.g. ``"0.3, 0.7"`` or ``"rotate=10, scale=0.1"``; empty for none.

    Returns:
      ``(args, kwargs)``: the positional values, and ``(name, value)`` pairs in the order written.

    Raises:
      ValueError: an argument that is not a literal, a positional one after a keyword, a keyword
        given twice, or unbalanced brackets.
    """
    args, kwargs = [], {}
    for item in split_top_level(inner, ",") if inner.strip() else []:
        key, equals, value = item.partition("=")
        if equals and _KEYWORD.fullmatch(key):
            if key.strip() in kwargs:
                raise ValueError(f"argument {key.strip()!r} given twice in {inner!r}")
            kwargs[key.strip()] = literal(value)
        elif kwargs:
            raise ValueError(f"positional argument {item.strip()!r} after keywords in {inner!r}")
        else:
            args.append(literal(item))
    return tuple(args), tuple(kwargs.items())


def parse_call(text: str) -> Call:
    """Parses ``name``, ``name(a, b, key=value)`` or ``package.module:attr(...)`` into a `Call`.

    Args:
      text: the function as written in a setting.

    Returns:
      The `Call`.

    Raises:
      ValueError: malformed text (the caller adds the setting's name).
    """
    text = text.strip()
    name, paren, rest = text.partition("(")
    name = name.strip()
    if paren and not rest.rstrip().endswith(")"):
        raise ValueError(f"{text!r} must end with ')'")
    if not (NAME.fullmatch(name) or IMPORT_PATH.fullmatch(name)):
        raise ValueError(
            f"{name!r} is neither a name nor an import path 'package.module:attribute'"
        )
    args, kwargs = parse_arguments(rest.rstrip()[:-1] if paren else "")
    return Call(name, args, kwargs)


@functools.cache
def import_path(path: str) -> Any:
    """The object at ``package.module:attribute`` (``attribute`` may be dotted).

    Raises:
      ImportError, AttributeError: the module or the attribute does not exist.
    """
    module_name, _, attribute = path.partition(":")
    obj = importlib.import_module(module_name)
    for part in attribute.split("."):
        obj = getattr(obj, part)
    return obj
