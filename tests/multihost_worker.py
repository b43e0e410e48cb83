"""One process of the two-process test: 2 CPU devices, jax.distributed over 127.0.0.1.

Usage: python tests/multihost_worker.py PORT PROCESS_ID OUTPUT_DIR [DIE_AFTER_STEPS]
Trains two steps of ``helpers.small_config`` on this host's shard of the global batches, then
evaluates.
With DIE_AFTER_STEPS, process 1 kills itself (SIGKILL) after that many steps and process 0 trains
on, to show how a run ends when a peer is lost (a 15 s heartbeat timeout keeps the test short).
"""

import json
import os
import signal
import sys

import jax

jax.config.update("jax_num_cpu_devices", 2)
jax.config.update("jax_platforms", "cpu")

from bts_jax.cli import distributed  # noqa: E402


def main(port: str, process_id: str, out_dir: str, die_after_steps: str = "") -> None:
    die_after = int(die_after_steps) if die_after_steps else None
    distributed.initialize(
        f"127.0.0.1:{port}",
        2,
        int(process_id),
        # 15 s: short enough to keep the test short, long enough that a peer compiling on a
        # loaded 2-core machine is not taken for lost (5 s was, in a full-suite run).
        heartbeat_timeout_s=15 if die_after else 60,
        shutdown_timeout_s=10 if die_after else 120,
    )
    assert jax.process_count() == 2 and jax.device_count() == 4, jax.devices()

    import numpy as np
    from helpers import small_config  # tests/, this script's folder, is on the path

    from bts_jax import evaluation
    from bts_jax import train as train_lib
    from bts_jax.sharding import make_global_batch, make_mesh
    from bts_jax.train.state import create_train_state

    config = small_config()
    mesh = make_mesh()
    run = train_lib.setup_run(config, mesh)
    state = create_train_state(config, run.model, run.optimizer, mesh)
    pipeline = train_lib.make_input_pipeline(config)
    steps = 2 if die_after is None else 1000
    for i, batch in enumerate(pipeline.train_batches(start_step=0)):
        if i == steps:
            break
        if die_after is not None and i == die_after and jax.process_index() == 1:
            os.kill(os.getpid(), signal.SIGKILL)
        state, _ = run.train_fn(state, make_global_batch(batch, mesh))
        jax.block_until_ready(state)
    # Replicated: every host holds a full copy in its first local shard.
    params = jax.tree_util.tree_map(lambda x: np.asarray(x.addressable_data(0)), state.params)
    flat = {
        "/".join(str(getattr(k, "key", k)) for k in path): np.asarray(leaf)
        for path, leaf in jax.tree_util.tree_leaves_with_path(params)
    }
    np.savez(os.path.join(out_dir, f"params_{jax.process_index()}.npz"), **flat)
    found = evaluation.evaluate(
        run.eval_fn, state, pipeline.eval_batches("validation"), mesh, num_classes=1
    )
    result = {**found.metrics, "per_image_ids": [row["id"] for row in found.per_image]}
    with open(os.path.join(out_dir, f"eval_{jax.process_index()}.json"), "w") as f:
        json.dump(result, f)
    jax.distributed.shutdown()


if __name__ == "__main__":
    main(*sys.argv[1:])
