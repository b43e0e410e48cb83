"""Writes the PyTorch golden files that tests/test_models_interop.py checks bts_jax against.

The network is milesial/Pytorch-UNet's ``UNet(n_channels, n_classes, bilinear=False)`` layout,
written here from reading their ``unet/unet_parts.py`` and ``unet/unet_model.py`` (same module
names, so the same state_dict names), with the base width as a parameter so the files stay small:

* ``inc``: DoubleConv(n_channels, w); ``down{k}``: MaxPool2d(2) then DoubleConv(w_{k-1}, w_k),
  widths ``w, 2w, 4w, 8w`` and the bottleneck ``16w`` (milesial: w = 64).
* DoubleConv: [Conv2d 3x3 padding 1 no bias, BatchNorm2d, ReLU] twice, in ``nn.Sequential``
  ``double_conv`` (children 0, 1, 2, 3, 4, 5).
* ``up{k}``: ConvTranspose2d(c, c // 2, 2, stride 2) named ``up``, pad to the skip's size, concat
  ``[skip, up]`` on channels, DoubleConv(c, c // 2) named ``conv``.
* ``outc``: Conv2d 1x1 with bias, named ``conv``.

Weights are random, BatchNorm affine parameters and running statistics are random and far from
their defaults (so a swapped mean/var or scale/bias shows), and the model runs in eval mode. The
reference output is computed in float64 from the float32 weights and stored rounded to float32,
so the test measures bts_jax's float32 error (plus at most 6e-8 relative from that rounding).

Files written to ``tests/data/`` (about 280 KB):

* ``milesial_golden_rgb_state.pth``: n_channels 3, n_classes 2, w = 2, saved with
  ``torch.save`` like milesial's ``train.py`` does, including its ``mask_values`` entry.
* ``milesial_golden_rgb_io.npz``: ``input`` (2, 3, 32, 32) NCHW float32, ``output``
  (2, 2, 32, 32) NCHW float32.
* ``milesial_golden_gray_state.npz``: n_channels 1, n_classes 1, w = 1, the state_dict as
  ``{name: array}`` (the format for users without PyTorch).
* ``milesial_golden_gray_io.npz``: ``input`` (2, 1, 32, 32), ``output`` (2, 1, 32, 32).

Rerun (needs PyTorch; bts_jax does not)::

  python3 -m venv /work/venvs/interop
  /work/venvs/interop/bin/pip install torch==2.13.0 numpy
  /work/venvs/interop/bin/python tools/make_milesial_golden.py [--out_dir tests/data]

The output is deterministic for a given PyTorch version (seeded CPU generator).
"""

import argparse
import os

import numpy as np
import torch
from torch import nn


class DoubleConv(nn.Module):
    """[Conv 3x3 without bias, BatchNorm, ReLU] twice, in the Sequential ``double_conv``."""

    def __init__(self, c_in: int, c_out: int):
        super().__init__()
        self.double_conv = nn.Sequential(
            nn.Conv2d(c_in, c_out, 3, padding=1, bias=False),
            nn.BatchNorm2d(c_out),
            nn.ReLU(),
            nn.Conv2d(c_out, c_out, 3, padding=1, bias=False),
            nn.BatchNorm2d(c_out),
            nn.ReLU(),
        )

    def forward(self, x):
        """(B, c_in, H, W) -> (B, c_out, H, W)."""
        return self.double_conv(x)


class Down(nn.Module):
    """Max pool 2, then DoubleConv, in the Sequential ``maxpool_conv``."""

    def __init__(self, c_in: int, c_out: int):
        super().__init__()
        self.maxpool_conv = nn.Sequential(nn.MaxPool2d(2), DoubleConv(c_in, c_out))

    def forward(self, x):
        """(B, c_in, H, W) -> (B, c_out, H / 2, W / 2)."""
        return self.maxpool_conv(x)


class Up(nn.Module):
    """Transposed conv halving the channels, pad to the skip's size, concat [skip, up], DoubleConv.

    The padding is empty for the 32x32 inputs used here; it is kept to match milesial's layout.
    """

    def __init__(self, c_in: int, c_out: int):
        super().__init__()
        self.up = nn.ConvTranspose2d(c_in, c_in // 2, 2, stride=2)
        self.conv = DoubleConv(c_in, c_out)

    def forward(self, x, skip):
        """(B, c_in, H, W) and a (B, c_in / 2, 2H, 2W) skip -> (B, c_out, 2H, 2W)."""
        x = self.up(x)
        dy, dx = skip.shape[2] - x.shape[2], skip.shape[3] - x.shape[3]
        x = nn.functional.pad(x, [dx // 2, dx - dx // 2, dy // 2, dy - dy // 2])
        return self.conv(torch.cat([skip, x], dim=1))


class OutConv(nn.Module):
    """1x1 convolution with bias, named ``conv``."""

    def __init__(self, c_in: int, num_classes: int):
        super().__init__()
        self.conv = nn.Conv2d(c_in, num_classes, 1)

    def forward(self, x):
        """(B, c_in, H, W) -> (B, num_classes, H, W) logits."""
        return self.conv(x)


class MilesialUNet(nn.Module):
    """milesial's ``UNet(n_channels, n_classes, bilinear=False)`` with base width ``width``."""

    def __init__(self, n_channels: int, n_classes: int, width: int = 64):
        super().__init__()
        w = [width * 2**k for k in range(5)]
        self.inc = DoubleConv(n_channels, w[0])
        for k in range(1, 5):
            setattr(self, f"down{k}", Down(w[k - 1], w[k]))
        for k in range(1, 5):
            setattr(self, f"up{k}", Up(w[5 - k], w[4 - k]))
        self.outc = OutConv(w[0], n_classes)

    def forward(self, x):
        """(B, n_channels, H, W) -> (B, n_classes, H, W) logits."""
        skips = [self.inc(x)]
        for k in range(1, 5):
            skips.append(getattr(self, f"down{k}")(skips[-1]))
        x = skips.pop()
        for k in range(1, 5):
            x = getattr(self, f"up{k}")(x, skips.pop())
        return self.outc(x)


def randomize_batch_norms(model: nn.Module, generator: torch.Generator) -> None:
    """Gives every BatchNorm non-trivial affine parameters and running statistics."""
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            n = module.num_features
            with torch.no_grad():
                module.weight.copy_(1 + 0.3 * torch.randn(n, generator=generator))
                module.bias.copy_(0.2 * torch.randn(n, generator=generator))
                module.running_mean.copy_(0.5 * torch.randn(n, generator=generator))
                module.running_var.copy_(0.25 + 2 * torch.rand(n, generator=generator))
                module.num_batches_tracked.fill_(7)


def make_case(n_channels: int, n_classes: int, width: int, seed: int):
    """Returns (model in eval mode, NCHW float32 input, NCHW output computed in float64)."""
    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(seed)
    model = MilesialUNet(n_channels, n_classes, width)
    randomize_batch_norms(model, generator)
    model.eval()
    images = torch.rand(2, n_channels, 32, 32, generator=generator)
    with torch.no_grad():
        output = model.double()(images.double())
    model.float()
    return model, images.numpy(), output.numpy()


def main() -> None:
    """Writes the four golden files."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out_dir", default=os.path.join("tests", "data"))
    out_dir = parser.parse_args().out_dir
    os.makedirs(out_dir, exist_ok=True)

    model, images, output = make_case(n_channels=3, n_classes=2, width=2, seed=0)
    state_dict = model.state_dict()
    state_dict["mask_values"] = [0, 1]  # As milesial's train.py saves its checkpoints.
    torch.save(state_dict, os.path.join(out_dir, "milesial_golden_rgb_state.pth"))
    np.savez(
        os.path.join(out_dir, "milesial_golden_rgb_io.npz"),
        input=images,
        output=output.astype(np.float32),
    )

    model, images, output = make_case(n_channels=1, n_classes=1, width=1, seed=1)
    arrays = {name: tensor.numpy() for name, tensor in model.state_dict().items()}
    np.savez_compressed(os.path.join(out_dir, "milesial_golden_gray_state.npz"), **arrays)
    np.savez(
        os.path.join(out_dir, "milesial_golden_gray_io.npz"),
        input=images,
        output=output.astype(np.float32),
    )
    for name in sorted(os.listdir(out_dir)):
        if name.startswith("milesial_golden"):
            print(name, os.path.getsize(os.path.join(out_dir, name)), "bytes")


if __name__ == "__main__":
    main()
