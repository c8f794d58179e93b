#!/usr/bin/env bash
# Everything the execution side still needs a GPU for, in one command, for a session that is lent
# one (the device tool runs it in the repository root: `bash bench/gpu.sh`):
#   1. build custom_op/ with nvcc for sm_80 and sm_90 plus PTX (the machine's python3 holds a CUDA
#      torch, not necessarily the pinned one: 2.11 with CUDA 13 on the lent machines)
#   2. the CUDA tests: kernels bit for bit against the reference, opcheck, streams, PackedModel on CUDA
#   3. python -m bench.gather --device cuda     (kernel vs a device memcpy; training gather)
#   4. python -m bench.switching --device cuda  (the ladder; synthetic store, needs no data)
#   5. with a store in ./state and its data in $WEIGHTSEP_CACHE: ws_execution.py / baseline_execution.py
# Every step is logged to $OUT/gpu.log (when OUT is set) and its results are copied into $OUT as soon
# as the step ends, so a time-out still returns what finished. Exit status: 1 if any step failed.
# Usage: bash bench/gpu.sh [--switches N]
set -uo pipefail
cd "$(dirname "$0")/.."
SWITCHES=5000
case "${1:-}" in
  -h|--help) sed -n '2,13p' "$0"; exit 0 ;;
  --switches) SWITCHES=$2 ;;
esac
PY=${PYTHON:-python3}
export WEIGHTSEP_CACHE=${WEIGHTSEP_CACHE:-/tmp/weightsep-gpu-cache}
mkdir -p "$WEIGHTSEP_CACHE" results
LOG=${OUT:+$OUT/gpu.log}
LOG=${LOG:-results/gpu.log}
: >"$LOG"
failed=()

step() {  # step NAME COMMAND...: run it, log it, copy fresh results to $OUT, remember a failure
  local name=$1; shift
  echo "== $name: $*" | tee -a "$LOG"
  local start=$SECONDS
  "$@" 2>&1 | tee -a "$LOG"
  local status=${PIPESTATUS[0]}
  echo "== $name: exit $status after $((SECONDS - start)) s" | tee -a "$LOG"
  [ "$status" -eq 0 ] || failed+=("$name")
  if [ -n "${OUT:-}" ]; then
    find results -maxdepth 1 -newer "$STAMP" \( -name '*.json' -o -name '*.png' \) -exec cp {} "$OUT"/ \; 2>/dev/null
  fi
  return "$status"
}
STAMP=$(mktemp)  # results newer than this are this run's
trap 'rm -f "$STAMP"' EXIT

step versions $PY -c 'import torch; print("torch", torch.__version__, "CUDA", torch.version.cuda, torch.cuda.get_device_name())' || exit 1
step nvcc nvcc --version
step build $PY -c 'from weightsep import ops; ops.set_backend("extension"); print("ops backend:", ops.BACKEND)' || exit 1
# one pytest worker (xdist, where installed) so a test that crashes the interpreter is reported and the rest still run
WORKER=$($PY -c 'import xdist' 2>/dev/null && echo "-n 1")
step tests $PY -m pytest -q -rs $WORKER tests/test_ops.py tests/test_execution.py tests/test_bench.py
step gather $PY -m bench.gather --device cuda
step switching $PY -m bench.switching --device cuda --no-store --switches "$SWITCHES"
if [ -d state ]; then
  step ws-gather $PY ws_execution.py --store state --device cuda --switches 50 --seed 0
  step ws-zero-copy $PY ws_execution.py --store state --device cuda --switches 50 --seed 0 --mode zero-copy
  step baseline $PY baseline_execution.py --store state --device cuda --switches 50 --seed 0
fi
if [ ${#failed[@]} -gt 0 ]; then
  echo "FAILED steps: ${failed[*]} (see $LOG)" | tee -a "$LOG" >&2
  exit 1
fi
echo "all steps passed" | tee -a "$LOG"
