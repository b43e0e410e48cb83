"""bts_jax: brain-tumour segmentation in JAX/Flax (U-Net with GSConv and ECA)."""

__version__ = "0.1.0"
