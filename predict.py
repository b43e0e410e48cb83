"""Segments images of any size with a trained workdir: a mask PNG and an overlay PNG per image.

The program is `bts_jax.cli.predict` (its docstring shows every form; ``--help`` lists the flags).
"""

from bts_jax.cli import predict

if __name__ == "__main__":
    predict.run()
