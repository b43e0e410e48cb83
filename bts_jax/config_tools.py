"""Config helpers shared by the run guard, the sweeps and inference: flat views and dotted fields.

Experiment configs are nested ``ml_collections.ConfigDict`` s; ``config.json`` holds the same
tree as JSON (tuples become lists). A flat view ``{"model.features": (16, 32), ...}`` is what a
sweep's overrides and a config diff are written in; a dotted name ``"data.image_size"`` reads or
sets one field.
"""

from __future__ import annotations

import copy
import difflib
import importlib.util
import json
import os
from collections.abc import Iterable, Mapping
from typing import Any

import ml_collections


def flatten(tree: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """Flattens nested mappings into ``{"a.b.c": leaf}`` (tuples and lists are leaves).

    Args:
      tree: a nested dict or ConfigDict.
      prefix: prepended to every key.

    Returns:
      The flat dict, keys in insertion order.
    """
    flat = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping | ml_collections.ConfigDict):
            flat.update(flatten(value, f"{name}."))
        else:
            flat[name] = value
    return flat


def flatten_config(config: ml_collections.ConfigDict | Mapping[str, Any]) -> dict[str, Any]:
    """A config as ``{dotted field: JSON value}`` (tuples as lists), as ``config.json`` holds it.

    Args:
      config: a ConfigDict, or the dict read from ``config.json``.

    Returns:
      The flat mapping, sorted by field.
    """
    if isinstance(config, ml_collections.ConfigDict):
        config = json.loads(config.to_json_best_effort())
    flat = flatten(config)
    return {k: list(v) if isinstance(v, tuple) else v for k, v in sorted(flat.items())}


def lists_to_tuples(value: Any) -> Any:
    """JSON lists back into tuples (``config.json`` turned the config's tuples into lists).

    Args:
      value: a JSON value (nested dicts and lists).

    Returns:
      The same value with every list a tuple.
    """
    if isinstance(value, dict):
        return {k: lists_to_tuples(v) for k, v in value.items()}
    if isinstance(value, list):
        return tuple(lists_to_tuples(v) for v in value)
    return value


def get_field(config: ml_collections.ConfigDict | Mapping[str, Any], dotted: str) -> Any:
    """The value of a dotted field, e.g. ``get_field(config, "data.image_size")``.

    Args:
      config: a nested config.
      dotted: the field's path.

    Returns:
      Its value.

    Raises:
      KeyError: a part of the path does not exist.
    """
    value = config
    for key in dotted.split("."):
        value = value[key]
    return value


def apply_overrides(
    config: ml_collections.ConfigDict, overrides: Mapping[str, Any], where: str
) -> ml_collections.ConfigDict:
    """A copy of ``config`` with flat ``{"field.path": value}`` overrides applied.

    Lists become tuples, as the configs write sequences.

    Args:
      config: the base experiment config.
      overrides: flat field paths and values.
      where: the setting the overrides come from, for error messages.

    Returns:
      The new config.

    Raises:
      ValueError: a field that the config does not have (an `UnknownFieldError`, with the closest
        fields it has), or a value of another type (named).
    """
    config = copy.deepcopy(config)
    for path, value in overrides.items():
        *parents, leaf = path.split(".")
        target = config
        for part in parents:
            if part not in target or not isinstance(target[part], ml_collections.ConfigDict):
                raise _not_a_base_field(path, config, where)
            target = target[part]
        if leaf not in target:
            raise _not_a_base_field(path, config, where)
        try:
            target[leaf] = tuple(value) if isinstance(value, list) else value
        except TypeError as e:
            raise ValueError(f"{where}: {path}={value!r} has the wrong type: {e}") from None
    return config


class UnknownFieldError(ValueError):
    """A config field that does not exist; the message names it and the closest fields that do."""


def field_names(config: ml_collections.ConfigDict | Mapping[str, Any]) -> set[str]:
    """Every dotted field of a config, sections included: ``"optimizer"``, ``"optimizer.lr"``...

    Args:
      config: a nested config.

    Returns:
      The dotted names.
    """
    names = set()
    for leaf in flatten(config):
        parts = leaf.split(".")
        names.update(".".join(parts[:i]) for i in range(1, len(parts) + 1))
    return names


def closest_fields(name: str, fields: Iterable[str], n: int = 3) -> list[str]:
    """The fields a mistyped or misplaced dotted name most likely meant, best first.

    Fields are ranked by the `difflib` similarity of their last part to the name's last part, so
    a field given without its section (``learning_rate`` for ``optimizer.learning_rate``) is found
    as surely as a typo; ties go to the field more similar as a whole.

    Args:
      name: the unknown dotted name.
      fields: the valid ones (e.g. `field_names`).
      n: at most this many.

    Returns:
      Up to ``n`` fields whose last part is at least 0.6 similar to ``name``'s, and within 0.15
      of the best match.
    """

    def ratio(a: str, b: str) -> float:
        return difflib.SequenceMatcher(None, a, b).ratio()

    last = name.split(".")[-1]
    scored = sorted(
        ((ratio(last, f.split(".")[-1]), ratio(name, f), f) for f in fields),
        key=lambda t: (-t[0], -t[1], t[2]),
    )
    if not scored or scored[0][0] < 0.6:
        return []
    best = scored[0][0]
    return [f for score, _, f in scored[:n] if score >= max(0.6, best - 0.15)]


def unknown_field_message(name: str, fields: Iterable[str], where: str) -> str:
    """One line naming an unknown field and what it may have meant.

    Args:
      name: the unknown dotted name (without ``config.``).
      fields: the valid ones.
      where: the config it is not in (a file, or "the config").

    Returns:
      E.g. ``"config.learning_rate is not a field of configs/test.py; did you mean
      optimizer.learning_rate?"``.
    """
    close = closest_fields(name, fields)
    hint = f"; did you mean {' or '.join(close)}?" if close else "."
    return f"config.{name} is not a field of {where}{hint}"


def check_fields(
    config: ml_collections.ConfigDict | Mapping[str, Any],
    schema: ml_collections.ConfigDict | Mapping[str, Any],
    where: str,
) -> None:
    """Refuses a config with a field that ``schema`` (the default config) does not have.

    A config file that sets ``config.learning_rate`` adds a field nothing reads: the run would
    silently train with the default learning rate.

    Args:
      config: the config a file made.
      schema: a config with every valid field.
      where: the file, for the message.

    Raises:
      UnknownFieldError: naming the first unknown field (in the config's order).
    """
    valid = field_names(schema)
    for name in flatten(config):
        if name not in valid:
            raise UnknownFieldError(unknown_field_message(name, valid, where))


def _not_a_base_field(path: str, config: ml_collections.ConfigDict, where: str) -> Exception:
    close = closest_fields(path, field_names(config))
    hint = f"; did you mean {' or '.join(close)}?" if close else "."
    return UnknownFieldError(f"{where}: {path!r} is not a field of the base config{hint}")


def configs_dir() -> str:
    """The packaged configs' folder: ``configs/`` of a clone, ``bts_jax/configs`` installed."""
    from bts_jax import configs

    return os.path.dirname(os.path.abspath(configs.__file__))


def config_presets(kind: str = "experiment") -> list[str]:
    """The names of the packaged configs: ``quickstart``, ``default``... (``paper_ablation``...).

    Args:
      kind: "experiment" (``configs/*.py``) or "sweep" (``configs/sweeps/*.py``).

    Returns:
      The names, sorted.
    """
    folder = configs_dir() if kind == "experiment" else os.path.join(configs_dir(), "sweeps")
    return sorted(
        name[: -len(".py")]
        for name in os.listdir(folder)
        if name.endswith(".py") and not name.startswith("_")
    )


def resolve_config_file(value: str | os.PathLike, kind: str = "experiment") -> str:
    """The config file a ``--config`` value names: a path, or the name of a packaged config.

    A value is, in this order: a file that exists (relative to the working directory); a path
    like ``configs/quickstart.py`` or ``configs/sweeps/paper_ablation.py``, taken from the folder
    that holds the packaged configs, so the repository's paths work from anywhere and after
    ``pip install``; or a preset name such as ``quickstart`` (``sweeps/paper_ablation``, or for
    ``kind="sweep"`` just ``paper_ablation``).

    Args:
      value: what the user wrote.
      kind: "experiment" or "sweep": where bare names are looked up first.

    Returns:
      The absolute path of the config file.

    Raises:
      FileNotFoundError: nothing matches; the message lists the presets.
    """
    value = os.fspath(value)
    if os.path.isfile(value):
        return os.path.abspath(value)
    root = configs_dir()
    name = value[: -len(".py")] if value.endswith(".py") else value
    candidates = [os.path.join(os.path.dirname(root), value)]
    if kind == "sweep":
        candidates.append(os.path.join(root, "sweeps", f"{name}.py"))
    candidates.append(os.path.join(root, f"{name}.py"))
    for candidate in candidates:
        if os.path.isfile(candidate):
            return os.path.abspath(candidate)
    raise FileNotFoundError(
        f"Config file not found: {value} (neither a file nor a packaged config; presets: "
        f"{', '.join(config_presets(kind))})."
    )


def load_config_file(
    path: str | os.PathLike, repo_root: str | None = None, argument: str | None = None
) -> Any:
    """Imports a config file and returns its ``get_config()``.

    Args:
      path: a config file or preset name (see `resolve_config_file`); relative paths are taken
        from ``repo_root`` first when given.
      repo_root: a folder relative paths are tried in first.
      argument: passed to ``get_config`` when given (``--config=file.py:argument``).

    Returns:
      What the file's ``get_config()`` returns.

    Raises:
      FileNotFoundError: the file does not exist (named).
      ValueError: the file has no ``get_config``.
    """
    path = os.fspath(path)
    if repo_root and not os.path.isabs(path) and os.path.isfile(os.path.join(repo_root, path)):
        path = os.path.join(repo_root, path)
    path = resolve_config_file(path)
    spec = importlib.util.spec_from_file_location(f"_bts_config_{abs(hash(path))}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    if not hasattr(module, "get_config"):
        raise ValueError(f"{path} has no get_config() function.")
    return module.get_config() if argument is None else module.get_config(argument)
