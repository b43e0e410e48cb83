"""Other frameworks' views of the bts_jax U-Net: PyTorch weights in, Flax NNX modules out.

* `milesial`: milesial/Pytorch-UNet checkpoints (``.pth`` or ``.npz``) as bts_jax variables.
* `torch_io`: a ``.pth`` reader that needs no PyTorch and accepts only tensors.
* `nnx`: the U-Net as a Flax NNX module whose stages can be swapped in place.
"""
