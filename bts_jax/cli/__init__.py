"""The command-line programs: train, evaluate, predict, export, sweep, report, compare.

Each module ``bts_jax.cli.<program>`` defines its flags and a ``run()`` entry point; the scripts
at the top of the repository (``train.py`` ...) and the installed console commands call it.
Importing this package first quiets TensorFlow's start-up notices (`startup.quiet_start`).
"""

from bts_jax.cli.startup import quiet_start

quiet_start()
