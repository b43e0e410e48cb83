"""Ablation sweep definitions: base config, variants, seeds and folds (see bts_jax.sweep)."""
