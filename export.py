"""Exports a trained workdir for deployment: a jax.export artifact, its preprocessing, a SavedModel.

The program is `bts_jax.cli.export` (its docstring shows every form; ``--help`` lists the flags).
"""

from bts_jax.cli import export

if __name__ == "__main__":
    export.run()
