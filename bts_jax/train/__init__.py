"""Training: the state, optimiser, steps, the one loop, and seeds trained together.

`train_and_evaluate` is the entry point (``train.py`` calls it). Around it: `state` (the train
state), `optim` (optimiser and schedule), `losses`, `ema` (the moving average of the weights),
`steps` (the pure, jitted train and eval steps), `setup` (what a run derives from its config),
`seeds` (`SeedGroup`: one run, or the seeds of ``config.num_seeds`` in one program), `monitor`
(step metrics, epoch rows, progress), `finish` (the final evaluation and the end-of-run summary)
and `config_checks`.
"""

from bts_jax.train.finish import TrainResult, evaluate_checkpoint, final_evaluation, run_summary
from bts_jax.train.loop import due_events, train_and_evaluate
from bts_jax.train.monitor import NonFiniteLossError
from bts_jax.train.seeds import num_seeds_of, seed_configs
from bts_jax.train.setup import RunSetup, make_input_pipeline, setup_run

__all__ = [
    "NonFiniteLossError",
    "RunSetup",
    "TrainResult",
    "due_events",
    "evaluate_checkpoint",
    "final_evaluation",
    "make_input_pipeline",
    "num_seeds_of",
    "run_summary",
    "seed_configs",
    "setup_run",
    "train_and_evaluate",
]
