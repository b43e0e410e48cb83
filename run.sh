#!/usr/bin/env bash
# Sets everything up in a virtual environment (.venv), then runs the main job or the tests.
#   ./run.sh train [train.py flags]   train the quickstart config on the bundled sample
#   ./run.sh test  [pytest args]      lint, then the whole test suite
#   ./run.sh test --fast [args]       lint, then the fast tier (pytest -m "not slow")
# Needs only Python >= 3.11 with pip and venv (set PYTHON=/path/to/python3.11 to choose one).
set -euo pipefail
cd "$(dirname "$0")"
PYTHON="${PYTHON:-python3}"
VENV="${VENV:-.venv}"

"$PYTHON" -c 'import sys; sys.exit("bts_jax needs Python >= 3.11, found " + sys.version.split()[0] if sys.version_info < (3, 11) else 0)'
[ -x "$VENV/bin/python" ] || "$PYTHON" -m venv "$VENV"

case "${1:-}" in
  train)
    shift
    # The oneDNN convolutions where this platform has the packages (docs/performance.md, Speed
    # IV); without them, or without a C++ compiler, training runs XLA's (one line says why).
    "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check -e ".[onednn]" ||
      { echo "run.sh: the onednn extra did not install here; installing without it" >&2;
        "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check -e .; }
    exec "$VENV/bin/python" train.py --config configs/quickstart.py --workdir workdirs/quickstart "$@"
    ;;
  test)
    shift
    tier=()
    if [ "${1:-}" = "--fast" ]; then
      shift
      tier=(-m "not slow")
    fi
    "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check -e ".[test]"
    "$VENV/bin/ruff" check .
    "$VENV/bin/ruff" format --check .
    exec "$VENV/bin/python" -m pytest -n 2 --dist loadfile --durations=10 "${tier[@]}" tests "$@"
    ;;
  *)
    echo "usage: ./run.sh train [train.py flags] | ./run.sh test [--fast] [pytest args]" >&2
    exit 2
    ;;
esac
