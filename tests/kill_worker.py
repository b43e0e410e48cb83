"""A training run of the tiny config that kills itself with SIGKILL at a chosen point.

Usage: python tests/kill_worker.py WORKDIR [POINT]

POINT (none: run to the end):
  step:N        just before optimiser step N;
  checkpoint:N  while the latest save of step N is being written (its temporary folder exists);
  eval:N        in this process's N-th validation pass, after its first batch;
  figures       while the final prediction figures are drawn.

The run is test_train.py's uninterrupted run (8 fake CPU devices, ``helpers.resumable_config``),
so a resumed sequence of these runs can be compared with it bit for bit. SIGKILL is sent by the
process to itself at the exact point, which is what ``kill -9`` from outside does, minus the
race.
"""

import glob
import os
import signal
import sys
import time

import jax

jax.config.update("jax_num_cpu_devices", 8)
jax.config.update("jax_platforms", "cpu")

from helpers import resumable_config  # noqa: E402  (tests/, this script's folder, is on the path)

from bts_jax import evaluation  # noqa: E402
from bts_jax import train as train_lib  # noqa: E402
from bts_jax import workdir as workdir_lib  # noqa: E402
from bts_jax.evaluation import figures  # noqa: E402
from bts_jax.train import seeds  # noqa: E402


def _die() -> None:
    sys.stdout.flush()
    os.kill(os.getpid(), signal.SIGKILL)


def _arm(point: str, start_step: int) -> None:
    kind, _, number = point.partition(":")
    n = int(number or 0)
    calls = {"count": 0}
    if kind == "step":
        # The group of runs puts each step's batch on the devices (bts_jax.train.seeds).
        make_global_batch = seeds.make_global_batch

        def before_step(*args, **kwargs):
            calls["count"] += 1
            if start_step + calls["count"] == n:
                _die()
            return make_global_batch(*args, **kwargs)

        seeds.make_global_batch = before_step
    elif kind == "checkpoint":
        save = workdir_lib.save_checkpoint

        def during_save(manager, step, *args, **kwargs):
            save(manager, step, *args, **kwargs)
            if step == n and os.path.basename(str(manager.directory)) == "checkpoints":
                pattern = os.path.join(str(manager.directory), f"{n}.orbax-checkpoint-tmp*")
                deadline = time.monotonic() + 30
                while not glob.glob(pattern) and time.monotonic() < deadline:
                    time.sleep(0.001)
                print("tmp folder seen:", bool(glob.glob(pattern)), flush=True)
                _die()

        workdir_lib.save_checkpoint = during_save
    elif kind == "eval":
        evaluate = evaluation.evaluate

        def during_eval(fn, state, batches, *args, **kwargs):
            calls["count"] += 1
            if calls["count"] != n:
                return evaluate(fn, state, batches, *args, **kwargs)

            def first_batch_then_die():
                for i, batch in enumerate(batches):
                    if i == 1:
                        _die()
                    yield batch

            return evaluate(fn, state, first_batch_then_die(), *args, **kwargs)

        evaluation.evaluate = during_eval
    elif kind == "figures":

        def drawing(*args, **kwargs):
            _die()

        figures.save_prediction_overlays = drawing
    else:
        raise ValueError(f"Unknown kill point {point!r}.")


def main(workdir: str, point: str = "") -> None:
    config = resumable_config()
    if point:
        _arm(point, workdir_lib.latest_saved_step(workdir) or 0)
    train_lib.train_and_evaluate(config, workdir)
    print("finished", flush=True)


if __name__ == "__main__":
    main(*sys.argv[1:])
