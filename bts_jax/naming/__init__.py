"""How a setting names a function: the grammar every registry shares (`bts_jax.naming.calls`).

The bottom layer of the package (docs/architecture.md): models, data and training all read their
registries' settings through it, and it imports nothing of bts_jax.
"""
