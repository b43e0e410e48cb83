"""Writes the parameter trees and outputs of today's model configs, to pin them across refactors.

The block registry (docs/extending.md) re-expresses the ``gsconv_in`` / ``eca_in`` switches: the
configs written before it must keep building the same modules, with the same parameter paths and
shapes (so their checkpoints restore) and the same outputs for the same variables.
``tests/test_models_legacy.py`` checks the current code against the files this script writes.
They were made from commit 6129bd7 (before the registry); to remake them from that commit, copy
this file into a checkout of it and run it there:

  mkdir /tmp/bts_6129bd7 && git archive 6129bd7 | tar -x -C /tmp/bts_6129bd7
  cp tools/make_legacy_model_golden.py /tmp/bts_6129bd7/tools/
  ln -s ../configs /tmp/bts_6129bd7/bts_jax/configs  # that commit's configs, not an install's
  cd /tmp/bts_6129bd7 && PYTHONPATH=. python tools/make_legacy_model_golden.py \
      --out_dir <repo>/tests/data

Files written:

* ``legacy_param_trees.json``: for each case, ``{"params": {path: shape}, "batch_stats": ...}``
  at the config's own widths and at the tiny widths (4, 8, 16, 32), paths joined by ``/``.
* ``legacy_outputs.npz``: for each case with two stages of widths (4, 8) (small programs, quick
  to compile in the test), the input ``<case>/input`` (2, 16, 16, 1), the eval-mode logits
  ``<case>/eval`` of ``model.init(key(1), ...)``'s variables, and the train-mode logits
  ``<case>/train``, each from one ``jax.jit``-compiled call on CPU (as the test computes them).
"""

import argparse
import importlib
import json
import os

import jax
import jax.numpy as jnp
import numpy as np

from bts_jax.models import build_model

TINY = (4, 8, 16, 32)
OUTPUT_WIDTHS = (4, 8)
OUTPUT_INPUT_SHAPE = (2, 16, 16, 1)
# The configs whose checkpoints must keep restoring, plus ECA on the skip tensors (not in a config
# file, but a documented switch) mixed with GSConv in the decoder only.
CASES = {
    "unet_baseline": ("unet_baseline", {}),
    "paper": ("default", {}),
    "eca_only": ("ablation_eca_only", {}),
    "gsconv_only": ("ablation_gsconv_only", {}),
    "skip_eca": ("unet_baseline", {"eca_in": "encoder,skip", "gsconv_in": "decoder"}),
}


def case_model(case: str, tiny: bool):
    """The Linen UNet of a case, at its config's widths or at the tiny ones."""
    module, overrides = CASES[case]
    config = importlib.import_module(f"bts_jax.configs.{module}").get_config()
    for field, value in overrides.items():
        config.model[field] = value
    if tiny:
        config.model.features = TINY
    return build_model(config.model)


def tree_shapes(tree) -> dict[str, list[int]]:
    """``{"a/b/c": shape}`` for every leaf of a nested dict of arrays."""
    flat = jax.tree_util.tree_flatten_with_path(tree)[0]
    return {"/".join(k.key for k in path): list(leaf.shape) for path, leaf in flat}


def variables_shapes(model, shape=(1, 32, 32, 1)) -> dict[str, dict[str, list[int]]]:
    """Parameter and BatchNorm-statistics shapes of ``model`` (abstract init, no compute)."""
    variables = jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros(shape), train=False))
    return {collection: tree_shapes(tree) for collection, tree in variables.items()}


def main():
    """Writes both files to --out_dir."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out_dir", default=os.path.join("tests", "data"))
    args = parser.parse_args()
    trees, outputs = {}, {}
    for case in CASES:
        trees[case] = {
            "config_widths": variables_shapes(case_model(case, tiny=False)),
            "tiny": variables_shapes(case_model(case, tiny=True)),
        }
        model = case_model(case, tiny=True).clone(features=OUTPUT_WIDTHS)
        x = jax.random.normal(jax.random.key(0), OUTPUT_INPUT_SHAPE)
        variables = jax.jit(lambda x, m=model: m.init(jax.random.key(1), x, train=False))(x)
        outputs[f"{case}/input"] = np.asarray(x)
        evaluate = jax.jit(lambda v, x, m=model: m.apply(v, x, train=False))
        train = jax.jit(lambda v, x, m=model: m.apply(v, x, train=True, mutable=["batch_stats"]))
        outputs[f"{case}/eval"] = np.asarray(evaluate(variables, x))
        outputs[f"{case}/train"] = np.asarray(train(variables, x)[0])
    os.makedirs(args.out_dir, exist_ok=True)
    with open(os.path.join(args.out_dir, "legacy_param_trees.json"), "w") as f:
        json.dump(trees, f, indent=1, sort_keys=True)
        f.write("\n")
    np.savez_compressed(os.path.join(args.out_dir, "legacy_outputs.npz"), **outputs)
    print(f"Wrote {len(CASES)} cases to {args.out_dir}")


if __name__ == "__main__":
    main()
