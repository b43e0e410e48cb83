"""Experiments: sweeps of variants x seeds (x folds), their statistics, verdicts and reports.

`sweeps` is the sweep schema and folder layout, `runner` trains the cells, `stats` holds the
statistical tests (scipy.stats underneath), `results` reads finished cells, `analysis` summarises
and compares them, `claims` gives the verdicts on the paper's claims, `markdown` and `figures`
present them, and `report` writes it all (docs/design.md section 7).
"""
