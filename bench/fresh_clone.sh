#!/usr/bin/env bash
# Time the README's first command as a newcomer would meet it: a fresh clone, empty caches.
#
# Usage: bash bench/fresh_clone.sh [--purge-debian] [--tests]
#   --purge-debian  also remove the Debian packages prepare_data.sh installs and empty apt's cache,
#                   so they are downloaded again (needs root; changes this machine's packages)
#   --tests         then run the test command as CI does (CI=true: a skip for missing fixtures or
#                   data is a failure) in the same clone
#
# Clones HEAD of this repository into a new folder beside this checkout (so ../shared, the
# originals' fixtures, is where CI expects it), points WEIGHTSEP_CACHE and
# PIP_CACHE_DIR at new empty folders, runs `./setup.sh` and `python -m weightsep run`,
# timing each, and counts the bytes received on the network interfaces during setup. Writes
# results/fresh_clone.json (in this checkout) and leaves the clone's log beside it.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PURGE=0; TESTS=0
for arg in "$@"; do
  case "$arg" in
    --purge-debian) PURGE=1 ;;
    --tests) TESTS=1 ;;
    -h|--help) sed -n '2,13p' "$0"; exit 0 ;;
    *) echo "unknown argument: $arg (see --help)" >&2; exit 2 ;;
  esac
done

WORK="$(mktemp -d /tmp/weightsep-fresh-cache.XXXXXX)"  # caches and logs
CLONE="$(mktemp -d "$(dirname "$ROOT")/weightsep-fresh.XXXXXX")"  # beside this checkout: ../shared is the same
export WEIGHTSEP_CACHE="$WORK/cache" PIP_CACHE_DIR="$WORK/pip-cache"
mkdir -p "$WEIGHTSEP_CACHE" "$PIP_CACHE_DIR" "$ROOT/results"
LOG="$ROOT/results/fresh_clone.log"
: >"$LOG"
echo "fresh clone in $CLONE, caches in $WORK (log: $LOG)"

if [ "$PURGE" -eq 1 ]; then
  packages=$(sed -n 's/^    "\([a-z0-9.+-]*\):.*/\1/p' "$ROOT/prepare_data.sh")
  echo "purging: $packages" | tee -a "$LOG"
  # shellcheck disable=SC2086
  apt-get purge -y -qq $packages >>"$LOG" 2>&1 || true
  apt-get autoremove -y -qq >>"$LOG" 2>&1 || true
  apt-get clean
fi

git clone -q "$ROOT" "$CLONE"
cd "$CLONE"
received() { awk 'NR > 2 && $1 != "lo:" { sum += $2 } END { print sum }' /proc/net/dev; }

before=$(received)
start=$(date +%s.%N)
./setup.sh >>"$LOG" 2>&1
setup_s=$(echo "$(date +%s.%N) - $start" | bc)
downloaded=$(( $(received) - before ))

start=$(date +%s.%N)
/usr/bin/time -v .venv/bin/python -m weightsep run >>"$LOG" 2>"$WORK/time.txt"
run_s=$(echo "$(date +%s.%N) - $start" | bc)
cat "$WORK/time.txt" >>"$LOG"
peak_kb=$(sed -n 's/.*Maximum resident set size (kbytes): //p' "$WORK/time.txt")

tests_s=null
if [ "$TESTS" -eq 1 ]; then
  start=$(date +%s.%N)
  CI=true .ci/run >>"$LOG" 2>&1 || echo "tests failed (see $LOG)" >&2
  tests_s=$(echo "$(date +%s.%N) - $start" | bc)
fi

cat >"$ROOT/results/fresh_clone.json" <<EOF
{"commit": "$(git rev-parse HEAD)", "date": "$(date -Iseconds)", "purged_debian": $PURGE,
 "setup_seconds": $setup_s, "run_seconds": $run_s, "first_command_seconds": $(echo "$setup_s + $run_s" | bc),
 "downloaded_bytes_during_setup": $downloaded, "run_peak_rss_kb": ${peak_kb:-null}, "tests_seconds": $tests_s}
EOF
cat "$ROOT/results/fresh_clone.json"
tail -n 25 "$LOG" | grep -v "^\s*[A-Z].*:" || true
