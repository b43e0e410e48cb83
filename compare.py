"""Compares two trained workdirs on the same images (the paper's figure 8) in one PNG.

The program is `bts_jax.cli.compare` (its docstring shows every form; ``--help`` lists the flags).
"""

from bts_jax.cli import compare

if __name__ == "__main__":
    compare.run()
