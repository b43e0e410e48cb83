"""Writes the report of an ablation sweep: tables, paired tests, verdicts on the paper's claims.

The program is `bts_jax.cli.report` (its docstring shows every form; ``--help`` lists the flags).
"""

from bts_jax.cli import report

if __name__ == "__main__":
    report.run()
