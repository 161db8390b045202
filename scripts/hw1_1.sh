#!/usr/bin/env bash
# P1 in the course's calling convention: predict every image of IMG_DIR into OUT_CSV.
#   bash scripts/hw1_1.sh IMG_DIR OUT_CSV [CKPT]   (CKPT: a checkpoint or run folder, default runs/p1)
set -euo pipefail
if [ $# -lt 2 ] || [ $# -gt 3 ]; then
  echo "usage: bash $0 IMG_DIR OUT_CSV [CKPT]" >&2
  exit 2
fi
vislab cls predict "${3:-runs/p1}" "$1" "$2"
