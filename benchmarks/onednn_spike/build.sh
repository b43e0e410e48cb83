#!/usr/bin/env bash
# Builds conv_spike against the pip packages onednn + onednn-devel (issue 29's spike).
#
#   benchmarks/onednn_spike/build.sh [OUT]      (default OUT: benchmarks/onednn_spike/build/conv_spike)
#
# ONEDNN_PREFIX is the environment the two packages were installed into (default
# /work/venvs/onednn): headers under include/, libdnnl.so and its runtime (TBB, SYCL, ...) under
# lib/. The rpath is set as RPATH, not RUNPATH, so libdnnl's own dependencies resolve there too.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
prefix="${ONEDNN_PREFIX:-/work/venvs/onednn}"
out="${1:-$here/build/conv_spike}"
if [[ ! -f "$prefix/include/oneapi/dnnl/dnnl.hpp" ]]; then
    echo "no oneDNN headers under $prefix/include: pip install onednn onednn-devel there" >&2
    exit 1
fi
mkdir -p "$(dirname "$out")"
g++ -O3 -std=c++17 -Wall -I"$prefix/include" "$here/conv_spike.cpp" -o "$out" \
    -L"$prefix/lib" -ldnnl -Wl,--disable-new-dtags,-rpath,"$prefix/lib"
echo "$out"
