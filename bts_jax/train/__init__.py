"""Training: the state, the recipe parts by name, steps, the one loop, and seeds trained together.

`train_and_evaluate` is the entry point (``train.py`` calls it). Around it: `state` (the train
state), `registry` (recipe parts by name: `register_loss`, `register_optimizer`,
`register_schedule`), `losses` and `region_losses` (the registered losses), `loss_builder` (the
trainer's loss from ``config.loss``), `optim` (optimisers), `schedules` (learning-rate
schedules), `ema` (the moving average of the weights), `steps` (the pure, jitted train and eval
steps), `run_setup` (`RunSetup`: what a run derives from its config; epoch rows), `setup` (builds
it), `seeds` (`SeedGroup`: one run, or the seeds of ``config.num_seeds`` in one program),
`monitor` (step metrics, progress), `finish` (the final evaluation, `score_split` and the
end-of-run summary) and `config_checks`.
"""

from bts_jax.train.finish import (
    TrainResult,
    evaluate_checkpoint,
    final_evaluation,
    run_summary,
    score_split,
)
from bts_jax.train.loop import due_events, train_and_evaluate
from bts_jax.train.monitor import NonFiniteLossError
from bts_jax.train.registry import register_loss, register_optimizer, register_schedule
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
    "register_loss",
    "register_optimizer",
    "register_schedule",
    "run_summary",
    "score_split",
    "seed_configs",
    "setup_run",
    "train_and_evaluate",
]
