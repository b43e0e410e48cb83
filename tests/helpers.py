"""Helpers shared by the test modules (pytest puts tests/ on the path: ``import helpers``)."""

import os
import shutil

import ml_collections

from bts_jax.config_tools import apply_overrides
from bts_jax.configs import test as test_config


def tiny_config(**overrides) -> ml_collections.ConfigDict:
    """``configs/test.py`` with dotted overrides: ``tiny_config(**{"data.image_size": 64})``."""
    return apply_overrides(test_config.get_config(), overrides, "tiny_config")


def read_text(*path: str) -> str:
    """The text of the file at ``os.path.join(*path)``."""
    with open(os.path.join(*path)) as f:
        return f.read()


def copy_workdir(workdir: str, parent) -> str:
    """A private copy of a workdir (e.g. `trained_workdir`) in the folder ``parent``, to change."""
    copy = parent / os.path.basename(workdir)
    shutil.copytree(workdir, copy)
    return str(copy)
