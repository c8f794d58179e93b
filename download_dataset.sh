#!/usr/bin/env bash
# Fetch the Weight Separation authors' preprocessed datasets (NumPy arrays on Google Drive) into
# $WEIGHTSEP_CACHE/data/<dnn>/ (default ~/.cache/weightsep/data), as the original download_dataset.sh.
# Resumable (partial downloads continue; verified files are skipped), and every file is verified:
# it must load as a NumPy array with the expected sample size, and data and labels must agree.
# Usage: ./download_dataset.sh [DNN ...]      (default: all ten; e.g. ./download_dataset.sh cifar10 gsc)
#   WS_DATA_SOURCE=URL-or-dir  fetch <source>/<dnn>/<file> instead of Google Drive (mirrors, tests)
# MNIST is not among these files: the originals read the official IDX files (see docs/paper_dnns.md).
set -euo pipefail
cd "$(dirname "$0")"
case "${1:-}" in -h|--help) sed -n '2,9p' "$0"; exit 0 ;; esac
PY=${PYTHON:-$([ -x .venv/bin/python ] && echo .venv/bin/python || echo python3)}
DEST="${WEIGHTSEP_CACHE:-$HOME/.cache/weightsep}/data"

# dnn  file  drive-id  values-per-sample (data: H*W*C; label: classes)
FILES="
cifar10 cifar10_test_data.npy 1y92NkPwfKGlH6QvaRd1AH5HsuXxS_VTq 3072
cifar10 cifar10_test_label.npy 1nIEqxa4HPsXfOxka0X1YTHPtIQTd3gI0 10
cifar10 cifar10_train_data.npy 1GiwtMZWQLGuTCyuuc42lutD2QI0ACDke 3072
cifar10 cifar10_train_label.npy 1NBYkQf50ty3EzQiF1SKhAztUSiwejfxA 10
esc10 esc10_test_data.npy 1MLEzjpPo2aDDl3zz1mJIttiu9Leztxls 4920
esc10 esc10_test_label.npy 1HYp1T4_iPgmxY1Cc5Mj3pf-PFivNVTwb 10
esc10 esc10_train_data.npy 1KOAykNhNEkP8q8Ib-VF52w_gHgudn2IS 4920
esc10 esc10_train_label.npy 1xx3hljerqLm50I9mr7B1EBAAPVpHcN9D 10
fmnist fmnist_test_data.npy 1xIcFXcu9KsTOFpdRRrHfdPG3SniCdhhb 784
fmnist fmnist_test_label.npy 1K8SLjM7PeC0XIjNetJ8q4ZaDs3Se5T99 10
fmnist fmnist_train_data.npy 1tITHwmRwkTAGMCND5I4LIfxgy3Gn33xs 784
fmnist fmnist_train_label.npy 1mtTjU1ib2whkleH2sgrUx7sMlgEz3suL 10
gsc gsc_v2_test_data.npy 10xHTi2jJyWfhzJwZhwrpiJ1WNXWuSx5C 793
gsc gsc_v2_test_label.npy 1NDGE1u5VB9Bk1RMwepb1SJo9o56s4Tx0 35
gsc gsc_v2_train_data.npy 1Mp4RDAzsyNrk4JlUcZBoCBoBiLtK6h-h 793
gsc gsc_v2_train_label.npy 1vn9H8uFtmQWhPm4p0KEcLVrMSKp2ML0V 35
gsc gsc_v2_validation_data.npy 1MTrdhQaZ2ZvZvLIOjirE9zgst9wlYdsZ 793
gsc gsc_v2_validation_label.npy 1lHDzS8dX_pqr6ne1tBY9jFfIrXCiZ3jV 35
gtsrb GTSRB_test_data.npy 1-v81_TTw9yDrCK6KTpsTFKmHNnOBTjUW 1024
gtsrb GTSRB_test_label.npy 15uKYxNbD28fp89y2YXRlMFeElDTo_3_K 43
gtsrb GTSRB_train_data.npy 1BNIEvoVnRayXXoiTqWirptLqMr2bp7lB 1024
gtsrb GTSRB_train_label.npy 1hCd1NKKDgqsAn-6NE62mGX6jJSegItDj 43
hhar hhar_test_data.npy 1u5VK6Nf-B9tZTcMtJ3eMpjf5VpLwQY7e 2400
hhar hhar_test_label.npy 17TL4Kmf3lozB7pniBDaE4Melz1VkTxo2 6
hhar hhar_train_data.npy 1xeu2y6mHIK0YxVVy-epSR9OIHYwHmiGO 2400
hhar hhar_train_label.npy 1Q_6UpDrE_BHZLXlziykQtcxqStw1WeJE 6
obs obstacle_test_data.npy 1AiGWnABJbJR0DlRUtkUx3BSXxZjyWgRl 3600
obs obstacle_test_label.npy 1h5MG7aaLaw7b83UcUlUwPjRqhxR5dOL7 4
obs obstacle_train_data.npy 14yqTBhjmCDqhO_Y7gjRmECuBMo9d7GFY 3600
obs obstacle_train_label.npy 1QGmc20vyEYF-5GE7yIyt3mmOJ18WhQd- 4
obs obstacle_validation_data.npy 1y8bHJ9CHBjjZPn8QeK8wBxNCxePMvHDM 3600
obs obstacle_validation_label.npy 1tGc2_h5ppRX3BdFmepFIB1CBRvQ7qsLH 4
svhn svhn_test_data.npy 1hHzfZ8hVPE8EAyNG5cdD4BMyO3cyVp1s 3072
svhn svhn_test_label.npy 1NYuPreAb-1wxzYwi5WcnWq4S8rEXe8Sk 10
svhn svhn_train_data.npy 1BxFLHEy8_hCmAK9QXcvcHLcpDVR2P0t5 3072
svhn svhn_train_label.npy 1oFm06MFmjYFAn1NkjxDTH_aW5D2_TCE5 10
svhn svhn_validation_data.npy 1c1-47lIsycqgGWRuBKs3vTC6DLxMyrom 3072
svhn svhn_validation_label.npy 1SB06lrXDB0rF1hK5CpdSn9E1XgIYCdjV 10
us8k US8K_test_data.npy 1hWtUljFOq2bvTb-BwS-qFBKP_vcKAPJv 4920
us8k US8K_test_label.npy 1m_GY_xt0zy3tJM3GgVTmHV1KgUUIQ3U9 10
us8k US8K_train_data.npy 16n1dVCtFOYckfp800o4i080F5h787CzY 4920
us8k US8K_train_label.npy 1p5FCC3uhdskNsTqrbO0FzWQMjJICpMor 10
"

verify() {  # verify FILE VALUES_PER_SAMPLE: loads as an array of [N, ...] with that many values per sample
  "$PY" - "$1" "$2" <<'PYEOF'
import sys, numpy as np
path, per_sample = sys.argv[1], int(sys.argv[2])
try:
    a = np.load(path, mmap_mode="r", allow_pickle=False)
except Exception as e:
    sys.exit(f"{path}: not a NumPy array file ({e})")
if a.ndim < 2 or int(np.prod(a.shape[1:])) != per_sample:
    sys.exit(f"{path}: shape {a.shape}, expected [N, ...] with {per_sample} values per sample")
print(a.shape[0])
PYEOF
}

fetch() {  # fetch DNN FILE ID OUT.part: resumable
  local dnn=$1 file=$2 id=$3 out=$4
  if [ -n "${WS_DATA_SOURCE:-}" ]; then
    case "$WS_DATA_SOURCE" in
      http://*|https://*|file://*) curl -fsSL --retry 3 -C - -o "$out" "$WS_DATA_SOURCE/$dnn/$file" ;;
      *) cp "$WS_DATA_SOURCE/$dnn/$file" "$out" ;;
    esac
    return
  fi
  # Google Drive: large files need the confirm step; drive.usercontent answers with the file directly
  curl -fsSL --retry 3 --connect-timeout 20 -C - -o "$out" \
    "https://drive.usercontent.google.com/download?id=$id&export=download&confirm=t"
}

wanted=("$@")
failed=0
declare -A counts
while read -r dnn file id per_sample; do
  [ -n "$dnn" ] || continue
  if [ ${#wanted[@]} -gt 0 ] && [[ ! " ${wanted[*]} " == *" $dnn "* ]]; then continue; fi
  mkdir -p "$DEST/$dnn"
  target="$DEST/$dnn/$file"
  if [ -f "$target" ] && n=$(verify "$target" "$per_sample" 2>/dev/null); then
    echo "ok       $dnn/$file ($n samples, already there)"
  else
    echo "fetching $dnn/$file"
    if ! fetch "$dnn" "$file" "$id" "$target.part" 2>/tmp/ws_download_err.$$; then
      echo "error: could not fetch $dnn/$file: $(tail -1 /tmp/ws_download_err.$$ 2>/dev/null)" >&2
      echo "       no network? Fetch Drive file $id by hand and put it at $target" >&2
      failed=1; continue
    fi
    if ! n=$(verify "$target.part" "$per_sample"); then
      echo "error: $dnn/$file failed verification; kept as $target.part for inspection" >&2
      failed=1; continue
    fi
    mv "$target.part" "$target"
    echo "ok       $dnn/$file ($n samples)"
  fi
  counts["$dnn/${file%.npy}"]=$n
done <<< "$FILES"
rm -f /tmp/ws_download_err.$$

for key in "${!counts[@]}"; do  # data and labels of one split must have as many samples
  case "$key" in *_data) label="${key%_data}_label" ;; *) continue ;; esac
  if [ -n "${counts[$label]:-}" ] && [ "${counts[$key]}" != "${counts[$label]}" ]; then
    echo "error: $key has ${counts[$key]} samples but $label ${counts[$label]}" >&2; failed=1
  fi
done
[ $failed -eq 0 ] && echo "all requested files verified in $DEST" || exit 1
