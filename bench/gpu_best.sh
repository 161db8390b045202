#!/usr/bin/env bash
# The GPU runs recorded in docs/RESULTS.md: cls-best and seg-best side by side on one GPU.
#   bash bench/gpu_best.sh DATA_ROOT OUT_DIR      (DATA_ROOT holds p1_data/ and p2_data/)
set -u
data=${1:?DATA_ROOT}; out=${2:?OUT_DIR}
mkdir -p "$out"
vis() { python3 -m vislab "$@"; }
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader > "$out/gpu.txt" 2>&1
( vis cls train "$data/p1_data/train_50" --recipe cls-best --out "$out/cls-best" \
      --val-dir "$data/p1_data/val_50" > "$out/cls-best.log" 2>&1
  vis cls tsne "$out/cls-best" "$data/p1_data/val_50" --out "$out/cls-best/tsne.png" >> "$out/cls-best.log" 2>&1 ) &
( vis seg train "$data/p2_data/train" --recipe seg-best --out "$out/seg-best" \
      --val-dir "$data/p2_data/validation" > "$out/seg-best.log" 2>&1
  vis seg score "$out/seg-best" "$data/p2_data/validation" --tta d4 >> "$out/seg-best.log" 2>&1
  vis seg progress "$out/seg-best" --out "$out/seg-best/masks.png" >> "$out/seg-best.log" 2>&1 ) &
wait
