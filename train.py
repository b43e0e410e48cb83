"""Trains a bts_jax model: parses flags, sets up processes and devices, then calls the library.

The program is `bts_jax.cli.train` (its docstring shows every form; ``--help`` lists the flags).
"""

from bts_jax.cli import train

if __name__ == "__main__":
    train.run()
