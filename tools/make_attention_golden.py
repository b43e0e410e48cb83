"""Writes golden files of timm's and segmentation_models_pytorch's attention modules.

``tests/test_models_zoo.py`` checks bts_jax's ``se``, ``eca``, ``cbam`` and ``scse`` blocks
against them, without PyTorch: the same weights must give the same outputs to a relative 1e-5.

Pinned versions (the files in ``tests/data`` were made with exactly these):

* torch 2.13.0+cpu (the CPU wheel), numpy 2.4.6
* timm 1.0.31: ``timm.layers.squeeze_excite.SEModule``, ``timm.layers.eca.EcaModule``,
  ``timm.layers.cbam.CbamModule``
* segmentation-models-pytorch 0.6.0: ``segmentation_models_pytorch.base.modules.SCSEModule``

The modules are built with the hidden sizes and kernels bts_jax derives (``rd_channels``,
``kernel_size`` passed explicitly), weights and BatchNorm running statistics drawn at random
from a seeded generator (far from their defaults, so a swapped mean/var or scale/bias shows),
and run in eval mode (CBAM also in train mode). Outputs are computed in float64 from the float32
weights and stored rounded to float32.

Rerun (PyTorch is not a dependency of bts_jax)::

  python3 -m venv /work/venvs/golden
  /work/venvs/golden/bin/pip install torch==2.13.0 numpy==2.4.6   # the CPU wheel
  /work/venvs/golden/bin/pip install --no-deps timm==1.0.31 segmentation-models-pytorch==0.6.0
  /work/venvs/golden/bin/pip install pyyaml huggingface_hub safetensors
  /work/venvs/golden/bin/python tools/make_attention_golden.py [--out_dir tests/data]

torchvision is left out: PyPI's Linux wheels of it are CUDA builds that do not import beside the
CPU torch, and none of the modules above use it. So this script registers timm and smp as
packages without running their ``__init__`` (which import their whole model zoos) and, when
torchvision cannot be imported, gives ``timm.layers`` the one name it imports from it at load
time (``torchvision.ops.misc.FrozenBatchNorm2d``, used only to freeze BatchNorm layers).

File written: ``attention_golden.npz`` with, per case, ``<case>/input`` (NCHW float32),
``<case>/output`` (and ``<case>/output_train`` for CBAM) and ``<case>/state/<name>`` for every
tensor of the module's ``state_dict`` (PyTorch layouts: OIHW kernels).
"""

import argparse
import importlib.util
import os
import sys
import types

import numpy as np
import torch


def _package_without_init(name: str) -> None:
    """Registers package ``name`` so its submodules import without running its ``__init__``."""
    spec = importlib.util.find_spec(name)
    module = types.ModuleType(name)
    module.__path__ = list(spec.submodule_search_locations)
    sys.modules[name] = module


def _load_modules():
    try:
        import torchvision  # noqa: F401
    except Exception:  # Absent, or a CUDA build beside the CPU torch.
        names = ["torchvision", "torchvision.ops", "torchvision.ops.misc"]
        for key in [k for k in sys.modules if k.startswith("torchvision")]:
            del sys.modules[key]
        stubs = {n: types.ModuleType(n) for n in names}
        for n in names[:2]:
            stubs[n].__path__ = []
        stubs["torchvision.ops.misc"].FrozenBatchNorm2d = type("FrozenBatchNorm2d", (), {})
        sys.modules.update(stubs)
    for name in ("timm", "segmentation_models_pytorch", "segmentation_models_pytorch.base"):
        _package_without_init(name)
    from segmentation_models_pytorch.base.modules import SCSEModule
    from timm.layers.cbam import CbamModule
    from timm.layers.eca import EcaModule
    from timm.layers.squeeze_excite import SEModule

    return SEModule, EcaModule, CbamModule, SCSEModule


def _randomize(module: torch.nn.Module, generator: torch.Generator) -> None:
    """Draws every parameter and BatchNorm running statistic at random (seeded)."""
    with torch.no_grad():
        for name, tensor in module.state_dict().items():
            if name.endswith("num_batches_tracked"):
                continue
            batch_norm_scale = name.endswith("weight") and tensor.ndim == 1
            if name.endswith("running_var") or batch_norm_scale:
                tensor.copy_(0.5 + torch.rand(tensor.shape, generator=generator))
            else:
                tensor.copy_(0.5 * torch.randn(tensor.shape, generator=generator))


def main():
    """Writes attention_golden.npz to --out_dir."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out_dir", default=os.path.join("tests", "data"))
    args = parser.parse_args()
    SEModule, EcaModule, CbamModule, SCSEModule = _load_modules()
    generator = torch.Generator().manual_seed(0)
    # case: (module, input shape NCHW). Hidden sizes as bts_jax derives them:
    # max(C // r, min(C, 8)); ECA's kernel from eca_kernel_size(C).
    cases = {
        "se_c32_r16": (SEModule(32, rd_channels=8), (2, 32, 6, 5)),
        "se_c64_r4": (SEModule(64, rd_channels=16), (2, 64, 5, 7)),
        "eca_c64": (EcaModule(kernel_size=3), (2, 64, 5, 6)),
        "eca_c128": (EcaModule(kernel_size=5), (2, 128, 4, 3)),
        "cbam_c32_r16": (CbamModule(32, rd_channels=8, spatial_kernel_size=7), (2, 32, 9, 7)),
        "scse_c64_r4": (SCSEModule(64, reduction=4), (2, 64, 6, 7)),
    }
    arrays = {}
    for case, (module, shape) in cases.items():
        _randomize(module, generator)
        x = torch.randn(shape, generator=generator)
        arrays[f"{case}/input"] = x.numpy()
        for name, tensor in module.state_dict().items():
            if not name.endswith("num_batches_tracked"):
                arrays[f"{case}/state/{name}"] = tensor.numpy().copy()
        double = module.double()
        with torch.no_grad():
            arrays[f"{case}/output"] = double.eval()(x.double()).float().numpy()
            if case.startswith("cbam"):
                arrays[f"{case}/output_train"] = double.train()(x.double()).float().numpy()
    os.makedirs(args.out_dir, exist_ok=True)
    path = os.path.join(args.out_dir, "attention_golden.npz")
    np.savez_compressed(path, **arrays)
    print(f"Wrote {path}: {len(cases)} cases, {os.path.getsize(path)} bytes.")
    for key in sorted(arrays):
        print(f"  {key}: {arrays[key].shape}")


if __name__ == "__main__":
    main()
