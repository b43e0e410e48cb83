"""Ablation sweep definitions: base config, variants, seeds, folds (bts_jax.experiments.sweeps)."""
