"""Evaluates a trained workdir's checkpoint on a split: prints every metric and saves them as JSON.

The program is `bts_jax.cli.evaluate` (its docstring shows every form; ``--help`` lists the flags).
"""

from bts_jax.cli import evaluate

if __name__ == "__main__":
    evaluate.run()
