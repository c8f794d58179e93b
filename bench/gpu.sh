#!/usr/bin/env bash
# Everything the execution side still needs a GPU for, in one command, for a session that is lent
# one (the device tool runs it in the repository root: `bash bench/gpu.sh`):
#   1. build custom_op/ with nvcc for sm_80 and sm_90 (the machine's python3 holds a CUDA torch)
#   2. the CUDA tests: kernels bit for bit against the reference, opcheck, streams, PackedModel on CUDA
#   3. python -m bench.gather --device cuda     (kernel vs a device memcpy; training gather)
#   4. python -m bench.switching --device cuda  (the ladder; synthetic store, needs no data)
#   5. with a store in ./state and its data in $WEIGHTSEP_CACHE: ws_execution.py / baseline_execution.py
# Results: results/*.json and .png, copied into $OUT when it is set. Exit status: the tests'.
# Usage: bash bench/gpu.sh [--switches N]
set -uo pipefail
cd "$(dirname "$0")/.."
case "${1:-}" in
  -h|--help) sed -n '2,11p' "$0"; exit 0 ;;
  --switches) SWITCHES=$2 ;;
esac
PY=${PYTHON:-python3}
export WEIGHTSEP_CACHE=${WEIGHTSEP_CACHE:-/tmp/weightsep-gpu-cache}
mkdir -p "$WEIGHTSEP_CACHE"
$PY -c 'import torch; print("torch", torch.__version__, "CUDA", torch.version.cuda, torch.cuda.get_device_name())' || exit 1
nvcc --version | tail -1
$PY -c 'from weightsep import ops; ops.set_backend("extension"); print("ops backend:", ops.BACKEND)' || exit 1
$PY -m pytest -q -rs tests/test_ops.py tests/test_execution.py tests/test_bench.py
tests=$?
$PY -m bench.gather --device cuda
$PY -m bench.switching --device cuda --no-store --switches "${SWITCHES:-5000}"
if [ -d state ]; then
  $PY ws_execution.py --store state --device cuda --switches 50 --seed 0
  $PY ws_execution.py --store state --device cuda --switches 50 --seed 0 --mode zero-copy
  $PY baseline_execution.py --store state --device cuda --switches 50 --seed 0
fi
if [ -n "${OUT:-}" ]; then
  cp results/gather.json results/switching.json results/switching.png "$OUT"/
fi
exit $tests
