#!/usr/bin/env bash
# The GPU check: what bts_jax does on one GPU, in one run of at most 8 minutes on an H100/H200.
#
#   bash benchmarks/gpu_check.sh                       # on the GPU machine, from the repository root
#   bash benchmarks/gpu_check.sh --data_dir=/data/brain_tumor   # paper protocol on the real folder
#   bash benchmarks/gpu_check.sh --dry_run             # CPU, tiny sizes: checks the wiring only
#
# Prints, each in its own section:
#   1. benchmarks/vs_pytorch.py on the paper's model and input (widths 64-512, 512x512, batch 8):
#      baseline U-Net and paper model, bts_jax float32 and bfloat16, PyTorch eager (float32 and
#      bfloat16 autocast) and torch.compile, TF32 set alike in both frameworks (--tf32, default
#      on), with images/s, the ratio to PyTorch eager in the row's dtype, GFLOP/s, MFU and peak
#      memory;
#   2. the formulations on this device, in alternated rounds: GSConv's depthwise convolution
#      (config.model.depthwise_impl grouped vs dense) and the up-convolution
#      (config.model.upsample_impl conv_transpose vs gemm);
#   3. the paper protocol's time per epoch: train.py with configs/paper.py for 2 epochs at
#      512x512 (on --data_dir, else the bundled sample_128 resized to 512: the same 500 pairs and
#      steps per epoch), epoch by epoch from its metrics.jsonl, and the whole run's wall time;
#   4. K seeds in one program vs one by one (benchmarks/seeds_throughput.py).
# Every section runs under its own time limit (SECONDS_* below, 460 s in all), so the script ends
# in time even if one section hangs; a failed or timed-out section is reported and the others
# still run; the exit status is 1 if any section failed. Everything printed is also kept under
# --out (default: a new temporary folder), one log per section.
#
# Options: --dry_run, --data_dir=DIR, --out=DIR, --python=PYTHON (default: python),
#          --tf32=on|off|default (default on).
set -euo pipefail

DRY_RUN=0
DATA_DIR=""
OUT=""
PYTHON="python"
TF32="on"
for arg in "$@"; do
  case "$arg" in
    --dry_run) DRY_RUN=1 ;;
    --data_dir=*) DATA_DIR="${arg#*=}" ;;
    --out=*) OUT="${arg#*=}" ;;
    --python=*) PYTHON="${arg#*=}" ;;
    --tf32=*) TF32="${arg#*=}" ;;
    -h | --help)
      sed -n '2,27p' "$0"
      exit 0
      ;;
    *)
      echo "gpu_check.sh: unknown argument $arg (see --help)" >&2
      exit 2
      ;;
  esac
done

cd "$(dirname "$0")/.."
OUT="${OUT:-$(mktemp -d -t bts_gpu_check.XXXXXX)}"
mkdir -p "$OUT"
export TF_CPP_MIN_LOG_LEVEL=2
export PYTHONUNBUFFERED=1

SECONDS_TABLE=210
SECONDS_FORMULATIONS=100
SECONDS_PAPER=100
SECONDS_SEEDS=50
FAILED=()

section() {
  # section NAME LIMIT_S COMMAND...: runs COMMAND under a time limit, keeps its output.
  local name="$1" limit="$2"
  shift 2
  local log="$OUT/${name// /_}.log"
  echo
  echo "=== $name (limit ${limit} s) ==="
  echo "\$ $*"
  local start=$SECONDS rc=0
  timeout --kill-after=10 "$limit" "$@" >"$log" 2>&1 || rc=$?
  # Without absl's info lines and progress bars (a bar redraws itself with carriage returns).
  tr '\r' '\n' <"$log" | grep -v -E "^(I|W)[0-9]{4} |Unable to initialize backend|^$|[0-9]+%\|" |
    tail -n 60 || true
  if [ "$rc" -eq 0 ]; then
    echo "--- $name: done in $((SECONDS - start)) s"
  elif [ "$rc" -eq 124 ] || [ "$rc" -eq 137 ]; then
    echo "--- $name: TIMED OUT after ${limit} s (full log: $log)"
    FAILED+=("$name (timed out)")
  else
    echo "--- $name: FAILED with status $rc (full log: $log)"
    FAILED+=("$name (status $rc)")
  fi
}

MODELS=baseline,paper
if [ "$DRY_RUN" -eq 1 ]; then
  # Tiny two-stage models, the baseline where one model shows the wiring: every command and
  # every parser of the real run, in about a minute of a quiet CPU (mostly compiling).
  export JAX_PLATFORMS=cpu
  # Skip LLVM's optimisations: compiling dominates tiny programs (the test suite does the same).
  export XLA_FLAGS="${XLA_FLAGS:---xla_backend_optimization_level=0}"
  SIZE=(--features=4,8 --image_size=16 --batch=2)
  TIMING=(--repeats=1 --steps=1 --warmup=0)
  DTYPES=float32
  MODELS=baseline
  # torch.compile needs a C++ toolchain and a minute on a CPU: the dry run leaves it out.
  FRAMEWORKS=jax,torch
  if ! "$PYTHON" -c "import torch" >/dev/null 2>&1; then FRAMEWORKS=jax; fi
  TINY=("--config.model.features=(4, 8)" --config.model.gsconv_in= --config.model.eca_in=)
  PAPER=(--config.data.source=sample --config.data.image_size=16 --config.data.subset_size=0
    "${TINY[@]}" --config.batch_size=8 --config.eval_batch_size=16 --config.num_predictions=0)
  SEEDS=(--config configs/test.py "${TINY[@]}" --image_size=16 --num_seeds=1,2 --steps=1
    --warmup=0)
  SECONDS_TABLE=300
  SECONDS_FORMULATIONS=300
  SECONDS_PAPER=300
  SECONDS_SEEDS=300
else
  SIZE=(--sizes=paper)
  TIMING=(--repeats=3 --steps=5 --warmup=2)
  DTYPES=float32,bfloat16
  FRAMEWORKS=jax,torch,torch_compile
  if [ -n "$DATA_DIR" ]; then
    PAPER=(--config.data.source=folder "--config.data.data_dir=$DATA_DIR")
  else
    PAPER=(--config.data.source=sample_128)
  fi
  SEEDS=(--config configs/quickstart.py --image_size=128 --num_seeds=1,4,8 --steps=10 --warmup=2)
fi

echo "bts_jax GPU check: $(date -u +%FT%TZ), git $(git rev-parse --short HEAD 2>/dev/null || echo '?'), logs in $OUT"
"$PYTHON" - <<'EOF' || true
import jax
print(f"jax {jax.__version__}; backend {jax.default_backend()}; devices {jax.devices()}")
EOF
command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total,driver_version \
  --format=csv,noheader || true

section "1 vs PyTorch" "$SECONDS_TABLE" "$PYTHON" benchmarks/vs_pytorch.py "${SIZE[@]}" \
  "${TIMING[@]}" --models="$MODELS" --dtypes="$DTYPES" --frameworks="$FRAMEWORKS" --tf32="$TF32"

section "2a depthwise formulations" "$SECONDS_FORMULATIONS" "$PYTHON" benchmarks/vs_pytorch.py \
  "${SIZE[@]}" "${TIMING[@]}" --dtypes=float32 --frameworks=jax --tf32="$TF32" --models=paper \
  --depthwise_impls=grouped,dense
section "2b up-convolution formulations" "$SECONDS_FORMULATIONS" "$PYTHON" \
  benchmarks/vs_pytorch.py "${SIZE[@]}" "${TIMING[@]}" --dtypes=float32 --frameworks=jax \
  --tf32="$TF32" --models=baseline --upsample_impls=conv_transpose,gemm

PAPER_DIR="$OUT/paper_workdir"
rm -rf "$PAPER_DIR"
section "3 paper protocol, 2 epochs" "$SECONDS_PAPER" "$PYTHON" train.py \
  --config configs/paper.py --workdir "$PAPER_DIR" --config.num_epochs=2 "${PAPER[@]}"
"$PYTHON" - "$PAPER_DIR" <<'EOF' || FAILED+=("3 paper protocol: no metrics")
import json, os, sys
path = os.path.join(sys.argv[1], "metrics.jsonl")
rows = [json.loads(line) for line in open(path)] if os.path.exists(path) else []
if not rows:
    sys.exit(f"no epoch rows in {path}")
print("| epoch | train images/s | train loss | val mIoU |")
print("|---|---|---|---|")
for row in rows:
    print(f"| {row['epoch']} | {row['train_images_per_s']:.1f} | {row['train_loss']:.4f} "
          f"| {row.get('val_miou', float('nan')):.4f} |")
print("Epoch 1 includes compiling the train step; epoch 2 is the steady state.")
EOF

section "4 seeds in one program" "$SECONDS_SEEDS" "$PYTHON" benchmarks/seeds_throughput.py \
  "${SEEDS[@]}"

echo
if [ "${#FAILED[@]}" -eq 0 ]; then
  echo "=== gpu_check: all sections done (logs in $OUT) ==="
else
  echo "=== gpu_check: ${#FAILED[@]} section(s) failed: ${FAILED[*]} (logs in $OUT) ==="
  exit 1
fi
