#!/usr/bin/env bash
# One device call of a GPU lease: the data and wheels travel in parts (bench/gpu_pack.py), one per
# call, and the campaign runs in the call that brings the last part.
#
#   here:  python bench/gpu_pack.py pack ../shared/data/hw1_data .gpu --wheel W.whl ...
#   there: bash bench/gpu_lease.sh N OUT_DIR [--smoke]      (the call carries .gpu/N)
#
# Every call unpacks its part under $GPU_ROOT (default /tmp/gpu, which lasts while the machine is
# held). The call that brings the wheels installs them under $GPU_ROOT/site, prints the software
# versions, and trains cls-best for a few batches on the images that have arrived: a check of
# the device's torch/timm/smp with vislab that fails in seconds rather than in the campaign.
# The call that completes the data runs bench/gpu_campaign.sh $GPU_ROOT/data OUT_DIR.
set -u -o pipefail
n=${1:?PART}; out=${2:?OUT_DIR}; smoke=${3:-}
root=${GPU_ROOT:-/tmp/gpu}; parts=${GPU_PARTS:-.gpu}
python3 bench/gpu_pack.py unpack "$parts/$n" "$root" | tee "$root.part$n.log" || exit 1
export PYTHONPATH="$root/site:$PWD/src${PYTHONPATH:+:$PYTHONPATH}"
if [ -n "$(ls "$root"/wheels/*.whl 2>/dev/null)" ] && [ ! -d "$root/site" ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target "$root/site" "$root"/wheels/*.whl || exit 1
  { nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>&1 || true
    python3 -c "import sys, torch, torchvision, timm, lightning, torchmetrics, segmentation_models_pytorch as smp
print('python', sys.version.split()[0], 'torch', torch.__version__, 'torchvision', torchvision.__version__, 'timm', timm.__version__,
      'lightning', lightning.__version__, 'torchmetrics', torchmetrics.__version__, 'smp', smp.__version__, 'cuda', torch.cuda.is_available())"
  } | tee "$root/versions.txt"
  check=(--epochs 1 --limit-batches 5)
  [ "$smoke" = "--smoke" ] && check+=(--batch-size 4 --image-size 64 --precision 32 --accelerator cpu --workers 0)
  VISLAB_CACHE="$root/check-cache" timeout 120 python3 -m vislab cls train "$root/data/p1_data/train_50" --recipe cls-best \
      --out "$root/check" "${check[@]}" > "$root/check.log" 2>&1
  echo "check (cls-best, 5 batches) exit $?"; tail -3 "$root/check.log"
fi
if grep -q "all .* parts in" "$root.part$n.log"; then
  bash bench/gpu_campaign.sh "$root/data" "$out" $smoke
fi
