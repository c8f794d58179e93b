#!/usr/bin/env bash
# Formation, as the original formation.sh: add each DNN to the store (-mode=a: pages, Fisher,
# separation, matching), then train it through its page table (-mode=t, -iter as given).
# Usage: ./formation.sh [-i ITER] [DNN ...]   (default: the offline suite's folders; ITER 2000)
# Extra flags for every call go in WS_FLAGS, e.g. WS_FLAGS="--store /tmp/state".
set -euo pipefail
cd "$(dirname "$0")"
PY=${PYTHON:-$([ -x .venv/bin/python ] && echo .venv/bin/python || echo python3)}
ITER=2000
if [ "${1:-}" = "-h" ] || [ "${1:-}" = "--help" ]; then sed -n '2,5p' "$0"; exit 0; fi
if [ "${1:-}" = "-i" ]; then ITER=$2; shift 2; fi
DNNS=("$@")
[ ${#DNNS[@]} -gt 0 ] || mapfile -t DNNS < <(ls -d suite/*/ | xargs -n1 basename)
for dnn in "${DNNS[@]}"; do
  name=$(basename "$dnn")
  $PY WeightSeparation.py -mode=a -network_path="$dnn" ${WS_FLAGS:-}
  $PY WeightSeparation.py -mode=t -vnn_name="$name" -iter="$ITER" ${WS_FLAGS:-}
done
