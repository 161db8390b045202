#!/usr/bin/env bash
# P2 in the course's calling convention: a colour mask per satellite image of IMG_DIR into OUT_DIR.
#   bash scripts/hw1_2.sh IMG_DIR OUT_DIR [CKPT]   (CKPT: a checkpoint or run folder, default runs/p2)
set -euo pipefail
if [ $# -lt 2 ] || [ $# -gt 3 ]; then
  echo "usage: bash $0 IMG_DIR OUT_DIR [CKPT]" >&2
  exit 2
fi
vislab seg predict "${3:-runs/p2}" "$1" "$2"
