"""Runs an ablation sweep (variants x seeds x folds), then writes its report.

The program is `bts_jax.cli.sweep` (its docstring shows every form; ``--help`` lists the flags).
"""

from bts_jax.cli import sweep

if __name__ == "__main__":
    sweep.run()
