#!/usr/bin/env bash
# Optimization, as the original optimization.sh: ROUNDS rounds; in each, TURNS times every packed
# DNN trains ITER steps through its page table (-mode=t); then every DNN is evaluated (-mode=e).
# Published: 100 rounds of 10 x 32 steps. One process per call, as the original: slow but faithful;
# `python -m weightsep run --optimizer round-robin` runs the same procedure in one process.
# Usage: ./optimization.sh [-r ROUNDS] [-t TURNS] [-i ITER]   (defaults 100, 10, 32)
# Extra flags for every call go in WS_FLAGS, e.g. WS_FLAGS="--store /tmp/state".
set -euo pipefail
cd "$(dirname "$0")"
PY=${PYTHON:-$([ -x .venv/bin/python ] && echo .venv/bin/python || echo python3)}
ROUNDS=100 TURNS=10 ITER=32
while [ $# -gt 0 ]; do
  case "$1" in
    -r) ROUNDS=$2; shift 2 ;;
    -t) TURNS=$2; shift 2 ;;
    -i) ITER=$2; shift 2 ;;
    -h|--help) sed -n '2,8p' "$0"; exit 0 ;;
    *) echo "unknown argument $1 (see --help)" >&2; exit 2 ;;
  esac
done
mapfile -t DNNS < <($PY -m weightsep list --names ${WS_FLAGS:-})
for ((i = 1; i <= ROUNDS; i++)); do
  echo "$i-th optimization"
  for ((j = 1; j <= TURNS; j++)); do
    for dnn in "${DNNS[@]}"; do $PY WeightSeparation.py -mode=t -vnn_name="$dnn" -iter="$ITER" ${WS_FLAGS:-}; done
  done
  echo "$i-th evaluation"
  for dnn in "${DNNS[@]}"; do $PY WeightSeparation.py -mode=e -vnn_name="$dnn" ${WS_FLAGS:-}; done
done
