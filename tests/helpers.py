"""Helpers shared by the test modules (pytest puts tests/ on the path: ``import helpers``)."""

import os

import ml_collections

from bts_jax.configs import test as test_config


def tiny_config(**overrides) -> ml_collections.ConfigDict:
    """``configs/test.py`` with dotted overrides: ``tiny_config(**{"data.image_size": 64})``."""
    config = test_config.get_config()
    for key, value in overrides.items():
        target = config
        *path, leaf = key.split(".")
        for part in path:
            target = target[part]
        target[leaf] = value
    return config


def read_text(*path: str) -> str:
    """The text of the file at ``os.path.join(*path)``."""
    with open(os.path.join(*path)) as f:
        return f.read()
