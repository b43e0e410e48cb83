"""Finds oneDNN and compiles ``onednn_conv.cpp`` into a shared library, once per machine.

oneDNN comes from pip (``pip install "bts_jax[onednn]"``: ``onednn-cpu-gomp`` with its
``libdnnl.so`` and ``onednn-devel-cpu-gomp`` with its headers, both installed under the
environment's prefix) or from ``$BTS_JAX_ONEDNN_PREFIX`` (a folder with ``include/`` and
``lib/``). The XLA FFI headers come with jaxlib (``jax.ffi.include_dir()``). The compiler is
``$CXX`` or ``g++`` on ``PATH``. The library goes to
``$BTS_JAX_CACHE_DIR/onednn/<hash>/`` (default ``~/.cache/bts_jax``), the hash covering the
source, the compiler's version, jax's and jaxlib's versions and the oneDNN library found, so a
change of any of them builds anew and a build is shared by every run that agrees on all.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

SOURCE = Path(__file__).with_name("onednn_conv.cpp")
# Distributions that carry oneDNN's library and headers, in order of preference: the CPU-only
# OpenMP build (about 160 MB) before the SYCL one (about 2 GB with its runtime, and a CPU engine
# that needs Intel's OpenCL CPU driver, see benchmarks/onednn_spike/RESULTS.md).
LIBRARY_DISTRIBUTIONS = ("onednn-cpu-gomp", "onednn")
HEADER_DISTRIBUTIONS = ("onednn-devel-cpu-gomp", "onednn-devel")


class BuildError(RuntimeError):
    """oneDNN, a compiler or the build itself is missing or failed; the message says which."""


def _distribution_file(names: tuple[str, ...], suffix: str) -> Path | None:
    """The first file ending in ``suffix`` that one of the distributions ``names`` installed."""
    for name in names:
        try:
            files = importlib.metadata.files(name) or []
        except importlib.metadata.PackageNotFoundError:
            continue
        for file in files:
            if str(file).endswith(suffix):
                path = Path(file.locate()).resolve()
                if path.exists():
                    return path
    return None


def find_onednn() -> tuple[Path, Path]:
    """Returns oneDNN's (include folder, lib folder).

    Raises:
      BuildError: neither ``$BTS_JAX_ONEDNN_PREFIX`` nor an installed distribution has both.
    """
    prefix = os.environ.get("BTS_JAX_ONEDNN_PREFIX")
    if prefix:
        include, lib = Path(prefix) / "include", Path(prefix) / "lib"
        if (include / "oneapi/dnnl/dnnl.hpp").exists() and (lib / "libdnnl.so").exists():
            return include, lib
        raise BuildError(f"BTS_JAX_ONEDNN_PREFIX={prefix} has no include/ and lib/libdnnl.so")
    header = _distribution_file(HEADER_DISTRIBUTIONS, "oneapi/dnnl/dnnl.hpp")
    library = _distribution_file(LIBRARY_DISTRIBUTIONS, "libdnnl.so")
    if header is None or library is None:
        raise BuildError(
            "oneDNN is not installed (pip install 'bts_jax[onednn]', or set BTS_JAX_ONEDNN_PREFIX)"
        )
    return header.parents[2], library.parent


def _compiler() -> str:
    compiler = shutil.which(os.environ.get("CXX", "g++"))
    if compiler is None:
        raise BuildError(f"no C++ compiler ({os.environ.get('CXX', 'g++')}) on PATH")
    return compiler


def _fingerprint(compiler: str, lib: Path) -> str:
    import jax
    import jaxlib

    version = subprocess.run([compiler, "--version"], capture_output=True, text=True).stdout
    library = lib / "libdnnl.so"
    parts = [
        SOURCE.read_bytes(),
        version.encode(),
        jax.__version__.encode(),
        jaxlib.__version__.encode(),
        str(library.resolve()).encode(),
        str(library.stat().st_size).encode(),
    ]
    return hashlib.sha256(b"\0".join(parts)).hexdigest()[:16]


def cache_dir() -> Path:
    """Where built libraries go: ``$BTS_JAX_CACHE_DIR/onednn`` or ``~/.cache/bts_jax/onednn``."""
    root = os.environ.get("BTS_JAX_CACHE_DIR") or Path.home() / ".cache" / "bts_jax"
    return Path(root) / "onednn"


def build_library() -> tuple[Path, Path]:
    """Returns (the built library, oneDNN's lib folder), compiling the library if needed.

    The compile takes about 10 s; concurrent processes each compile into a temporary file and
    rename it into place, so none ever loads a half-written library.

    Raises:
      BuildError: naming what is missing, or the compiler's last lines of output.
    """
    import jax

    include, lib = find_onednn()
    compiler = _compiler()
    folder = cache_dir() / _fingerprint(compiler, lib)
    target = folder / "libbts_onednn_conv.so"
    if target.exists():
        return target, lib
    folder.mkdir(parents=True, exist_ok=True)
    fd, partial = tempfile.mkstemp(suffix=".so", dir=folder)
    os.close(fd)
    command = [
        compiler,
        "-O3",
        "-std=c++17",
        "-shared",
        "-fPIC",
        f"-I{jax.ffi.include_dir()}",
        f"-I{include}",
        str(SOURCE),
        "-o",
        partial,
        f"-L{lib}",
        "-ldnnl",
        # RPATH, not RUNPATH, so that libdnnl's own dependencies resolve from its folder too.
        f"-Wl,--disable-new-dtags,-rpath,{lib}",
    ]
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode != 0:
        os.unlink(partial)
        lines = (done.stderr or done.stdout).strip().splitlines()
        # The first errors say what went wrong; warnings from the headers only add noise.
        tail = "\n".join(([line for line in lines if "error" in line] or lines)[:5])
        raise BuildError(f"compiling {SOURCE.name} failed:\n{tail}")
    os.replace(partial, target)
    (folder / "command.txt").write_text(" ".join(command) + "\n")
    return target, lib


if __name__ == "__main__":  # python -m bts_jax.models.onednn.build: build now, print the path.
    try:
        print(build_library()[0])
    except BuildError as error:
        sys.exit(str(error))
