#!/usr/bin/env bash
# One device call of a GPU lease: the data and wheels travel in parts (bench/gpu_pack.py), one per
# call, and the campaign runs in the call that brings the last part.
#
#   here:  python bench/gpu_pack.py pack ../shared/data/hw1_data .gpu --wheel W.whl ...
#   there: bash bench/gpu_lease.sh N OUT_DIR [--smoke]      (the call carries .gpu/N)
#          DEADLINE=S bash bench/gpu_lease.sh seeds OUT_DIR   (a later call, nothing carried: the
#          seed rows alone in S seconds, on the data the earlier calls left; the machine must still
#          be the warm one, so call it at once)
#
# Every call unpacks its part under $GPU_ROOT (default /tmp/gpu, which lasts while the machine is
# held). The call that brings the wheels installs them under $GPU_ROOT/site and prints the
# software versions. The first call that finds the P1 images whole and some complete P2 pairs
# trains cls-best and seg-best for a few batches side by side: a check of the device's
# torch/timm/smp with vislab that fails in seconds rather than inside the campaign (the lease of
# 2026-12-04 lost its seg-best run to a kernel that exists on a CPU but not on CUDA). The call
# that completes the data runs bench/gpu_campaign.sh $GPU_ROOT/data OUT_DIR.
set -u
n=${1:?PART}; out=${2:?OUT_DIR}; smoke=${3:-}
root=${GPU_ROOT:-/tmp/gpu}; parts=${GPU_PARTS:-.gpu}
export PYTHONPATH="$root/site:$PWD/src${PYTHONPATH:+:$PYTHONPATH}"
if [ "$n" = seeds ]; then
  [ -e "$root/.parts/complete" ] || { echo "gpu_lease: $root holds no complete data (a fresh machine?): nothing to run the seed rows on"; exit 1; }
  SEEDS_ONLY=1 bash bench/gpu_campaign.sh "$root/data" "$out" $smoke
  exit
fi
python3 bench/gpu_pack.py unpack "$parts/$n" "$root" || exit 1
marks="$root/.parts"  # gpu_pack.py forgets it when another pack arrives, so these flags go with it
if [ -n "$(ls "$root"/wheels/*.whl 2>/dev/null)" ] && [ ! -e "$marks/site-ok" ]; then
  rm -rf "$root/site"
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target "$root/site" "$root"/wheels/*.whl || exit 1
  touch "$marks/site-ok"
  { nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>&1 || true
    python3 -c "import sys, torch, torchvision, timm, lightning, torchmetrics, segmentation_models_pytorch as smp
print('python', sys.version.split()[0], 'torch', torch.__version__, 'torchvision', torchvision.__version__, 'timm', timm.__version__,
      'lightning', lightning.__version__, 'torchmetrics', torchmetrics.__version__, 'smp', smp.__version__, 'cuda', torch.cuda.is_available())"
  } | tee "$root/versions.txt"
fi
p1_whole() { [ "$(ls "$root/data/p1_data/train_50" 2>/dev/null | wc -l)" -ge 22500 ] || [ "$smoke" = "--smoke" ]; }
# not in the call that completes the data: the campaign's deadline leaves no room for it there
if [ ! -e "$marks/checked" ] && [ ! -e "$marks/complete" ] && p1_whole && [ -d "$root/data/p2_data/train" ]; then
  pairs="$root/check-pairs"; mkdir -p "$pairs"  # complete pairs only: a part may end between a mask and its image
  for m in "$root"/data/p2_data/train/*_mask.png; do
    s=${m%_mask.png}_sat.jpg
    [ -e "$s" ] && ln -sf "$m" "$s" "$pairs/"
    [ "$(ls "$pairs" | wc -l)" -ge 64 ] && break
  done
  if [ "$(ls "$pairs" | wc -l)" -ge 20 ]; then
    cc=(--epochs 1 --limit-batches 5); sc=(--epochs 1 --limit-batches 3 --snapshot "")
    if [ "$smoke" = "--smoke" ]; then
      . bench/gpu_smoke_flags.sh; cc+=("${smoke_cls[@]}"); sc+=("${smoke_seg[@]}")
    fi
    export VISLAB_CACHE="$root/check-cache"
    timeout 150 python3 -m vislab cls train "$root/data/p1_data/train_50" --recipe cls-best --out "$root/check-cls" \
        "${cc[@]}" > "$root/check-cls.log" 2>&1 & c=$!
    timeout 150 python3 -m vislab seg train "$pairs" --recipe seg-best --out "$root/check-seg" \
        "${sc[@]}" > "$root/check-seg.log" 2>&1 & s=$!
    wait $c; echo "check: cls-best, 5 batches: exit $?"; tail -2 "$root/check-cls.log"
    wait $s; echo "check: seg-best, 3 batches: exit $?"; tail -2 "$root/check-seg.log"
    unset VISLAB_CACHE; touch "$marks/checked"
  fi
fi
if [ -e "$marks/complete" ]; then
  bash bench/gpu_campaign.sh "$root/data" "$out" $smoke
fi
