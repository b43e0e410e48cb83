"""Reads a PyTorch ``state_dict`` (names -> arrays) from ``.pth`` or ``.npz`` without PyTorch.

A ``.pth`` written by ``torch.save`` (PyTorch >= 1.6, the default zip format) is a zip archive
holding ``<name>/data.pkl``, a pickle of the dictionary whose tensors refer to raw little- or
big-endian buffers ``<name>/data/<key>``. :func:`read_state_dict` unpickles it with an unpickler
that only knows the handful of globals a state_dict needs (``collections.OrderedDict``,
``torch._utils._rebuild_tensor_v2`` / ``_rebuild_parameter`` and the typed storage classes) and
rebuilds each tensor as a NumPy array from its storage, offset, shape and strides. Any other global
is refused, so a malicious file cannot run code (the same policy as ``torch.load(...,
weights_only=True)``). The pre-1.6 "legacy" format is not read: load it once with PyTorch and
save it again, or save ``{name: tensor.numpy()}`` with ``numpy.savez``.

An ``.npz`` maps each state_dict name to its array (``numpy.savez(path, **{k: v.numpy() ...})``).
"""

import collections
import io
import os
import pickle
import zipfile
from collections.abc import Mapping
from typing import Any

import ml_dtypes
import numpy as np

# PyTorch's typed storage classes (as pickled by torch.save) and the NumPy dtype of their elements.
_STORAGE_DTYPES = {
    "DoubleStorage": np.float64,
    "FloatStorage": np.float32,
    "HalfStorage": np.float16,
    "BFloat16Storage": ml_dtypes.bfloat16,
    "LongStorage": np.int64,
    "IntStorage": np.int32,
    "ShortStorage": np.int16,
    "CharStorage": np.int8,
    "ByteStorage": np.uint8,
    "BoolStorage": np.bool_,
}


class _StorageType:
    """Stands in for a ``torch.<X>Storage`` class: only its element dtype matters here."""

    def __init__(self, name: str):
        self.name = name
        self.dtype = np.dtype(_STORAGE_DTYPES[name])


def _rebuild_tensor(storage, storage_offset, size, stride, *_unused) -> np.ndarray:
    """Rebuilds ``torch._utils._rebuild_tensor_v2``'s tensor as a NumPy array (a copy)."""
    size, stride = tuple(size), tuple(stride)
    if len(size) != len(stride) or any(s < 0 for s in (*size, *stride)):
        raise pickle.UnpicklingError(f"invalid tensor size {size} / stride {stride}")
    if 0 in size:
        return np.zeros(size, storage.dtype)
    last = storage_offset + sum((n - 1) * s for n, s in zip(size, stride, strict=True))
    if storage_offset < 0 or last >= storage.size:
        raise pickle.UnpicklingError(
            f"tensor of size {size}, stride {stride} at offset {storage_offset} runs past its "
            f"storage of {storage.size} elements"
        )
    view = np.lib.stride_tricks.as_strided(
        storage[storage_offset:],
        shape=size,
        strides=tuple(s * storage.itemsize for s in stride),
        writeable=False,
    )
    return np.array(view)


def _rebuild_parameter(data, *_unused) -> np.ndarray:
    """``torch._utils._rebuild_parameter``: a Parameter is its data here."""
    return data


_ALLOWED_GLOBALS = {
    ("collections", "OrderedDict"): collections.OrderedDict,
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
    ("torch._utils", "_rebuild_parameter_with_state"): _rebuild_parameter,
}


class _StateDictUnpickler(pickle.Unpickler):
    """Unpickles ``data.pkl`` of a torch zip archive, refusing any global it does not know."""

    def __init__(self, data: bytes, archive: zipfile.ZipFile, prefix: str, byteorder: str):
        super().__init__(io.BytesIO(data))
        self._archive = archive
        self._prefix = prefix
        self._byteorder = "<" if byteorder == "little" else ">"
        self._storages: dict[str, np.ndarray] = {}

    def find_class(self, module: str, name: str) -> Any:
        if module == "torch" and name in _STORAGE_DTYPES:
            return _StorageType(name)
        if (module, name) in _ALLOWED_GLOBALS:
            return _ALLOWED_GLOBALS[(module, name)]
        raise pickle.UnpicklingError(
            f"refusing to load global {module}.{name}: only tensors, dicts, lists and numbers "
            "of a state_dict are read"
        )

    def persistent_load(self, pid: Any) -> np.ndarray:
        if not (isinstance(pid, tuple) and len(pid) == 5 and pid[0] == "storage"):
            raise pickle.UnpicklingError(f"unsupported persistent id {pid!r}")
        _, storage_type, key, _location, numel = pid
        if not isinstance(storage_type, _StorageType):
            raise pickle.UnpicklingError(f"unsupported storage type {storage_type!r}")
        if key not in self._storages:
            raw = self._archive.read(f"{self._prefix}data/{key}")
            dtype = storage_type.dtype.newbyteorder(self._byteorder)
            if len(raw) < numel * dtype.itemsize:
                raise pickle.UnpicklingError(
                    f"storage {key} holds {len(raw)} bytes, less than {numel} x {dtype}"
                )
            array = np.frombuffer(raw, dtype, count=numel)
            self._storages[key] = array.astype(array.dtype.newbyteorder("="), copy=False)
        return self._storages[key]


def _read_pth(path: str) -> Any:
    if not zipfile.is_zipfile(path):
        raise ValueError(
            f"{path} is not a zip archive: it is probably a legacy (PyTorch < 1.6) .pth file, "
            "which bts_jax does not read. Load it with PyTorch and save it again with "
            "torch.save, or save {name: tensor.numpy()} with numpy.savez."
        )
    with zipfile.ZipFile(path) as archive:
        pickles = [n for n in archive.namelist() if n.endswith("data.pkl") and n.count("/") == 1]
        if len(pickles) != 1:
            raise ValueError(f"{path}: expected one <name>/data.pkl in the archive, got {pickles}.")
        prefix = pickles[0][: -len("data.pkl")]
        names = archive.namelist()
        byteorder = "little"
        if f"{prefix}byteorder" in names:
            byteorder = archive.read(f"{prefix}byteorder").decode().strip()
        try:
            return _StateDictUnpickler(archive.read(pickles[0]), archive, prefix, byteorder).load()
        except (pickle.UnpicklingError, KeyError, EOFError) as error:
            raise ValueError(f"{path}: cannot read the PyTorch state_dict: {error}") from None


def read_state_dict(path: str | os.PathLike) -> dict[str, Any]:
    """Reads a PyTorch ``state_dict`` from a ``.pth``/``.pt`` zip archive or an ``.npz``.

    No PyTorch is needed: see the module docstring for how ``.pth`` files are read safely.
    Entries that are not tensors (for example milesial/Pytorch-UNet's ``"mask_values"`` list)
    are returned as they were pickled.

    Args:
      path: a ``.pth``/``.pt``/``.bin`` file written by ``torch.save(state_dict, path)``, or an
        ``.npz`` mapping each name to its array.

    Returns:
      ``{name: value}`` in the file's order; tensors are NumPy arrays of their own shape and dtype
      (PyTorch's layout, e.g. OIHW convolution kernels), bfloat16 as ``ml_dtypes.bfloat16``.

    Raises:
      FileNotFoundError: if ``path`` does not exist.
      ValueError: naming ``path`` if it is not a readable state_dict (legacy format, unknown
        pickled globals, truncated storages, or a top level that is not a dictionary).
    """
    path = os.fspath(path)
    if not os.path.exists(path):
        raise FileNotFoundError(f"No state_dict file at {path}.")
    if path.endswith(".npz"):
        with np.load(path, allow_pickle=False) as archive:
            return {name: archive[name] for name in archive.files}
    state_dict = _read_pth(path)
    if not isinstance(state_dict, Mapping):
        raise ValueError(
            f"{path} holds a {type(state_dict).__name__}, not a state_dict (a dictionary of "
            "tensors). Save model.state_dict(), not the model or a training checkpoint."
        )
    return dict(state_dict)
