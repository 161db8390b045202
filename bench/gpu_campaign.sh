#!/usr/bin/env bash
# The prepared GPU campaign (issue 18): the highest-value runs of one 15-minute GPU lease, in one
# command that finishes well under the 10-minute limit of a device command.
#
#   bash bench/gpu_campaign.sh DATA_ROOT OUT_DIR [--smoke]
#
# DATA_ROOT holds p1_data/ and p2_data/. Side by side on one GPU:
#   P1  cls-best (EfficientNet-Lite2, 224 px, 30 epochs; 289 s alone on an H100, 431 s on the
#       H200 of 2026-12-04 beside the FCN seed row), val_50
#       scored once by the training run and again with flip TTA, shift TTA and flip at 256 px
#       (each also scored on the held-out split of train_50, the honest place to choose one; the
#       summary names the choice and its val_50), and the t-SNE figure;
#   P2  seg-best (FPN / Lite2, 512 px, 40 epochs; the U-Net it replaced took 328 s on an H200
#       beside P1): the training run fits class offsets and the evaluation scale (0.8-1.5x:
#       training crops zoom 1-2x) on its held-out split and scores validation once with them;
#       validation scored again plain (the trained scale, no offsets: comparable with the U-Net
#       rows) and with offsets + d4 TTA, and the mask-progression figure.
#   P2  seg-half, beside them: the 2-core-CPU recipe seg-cpu (FPN / Lite1 at half resolution) for 30
#       epochs in batches of 16 under bf16, calibrating itself; validation with offsets and + d4.
#       Then both and their ensemble (each member with its own scale and offsets) scored on the
#       held-out pairs both runs kept out (`seg score --held-out`), the ensemble also on validation
#       with d4: the summary picks the P2 answer among the three on the held-out pairs.
# Then, in the time each side has left before DEADLINE seconds (the seed's rows, issue 18):
#   P1  cls-vgg16bn-seed (once seg-best has stopped training) and P2 seg-fcn32s-seed, from scratch (--weights none: no VGG ImageNet
#       weights offline) under bf16 autocast, each with a time budget of what is left (skipped under 150 s; the budget leaves 90 s for the rest), val
#       scored once; killed by `timeout` at the deadline if a budget overruns.
# With SEEDS_ONLY=1 (a later call of the same lease, once the data is on the machine) only the two
# seed rows run, side by side, each with a budget of the whole time before DEADLINE.
# Everything small lands in OUT_DIR/campaign.tar.gz (logs, recipes, history.csv, results.json,
# scores, figures) beside OUT_DIR/summary.txt: two files, within the 8 a device command returns.
# Checkpoints stay on the machine. On a lent device the data travels in parts: bench/gpu_lease.sh. --smoke runs the same steps on a CPU for 1 epoch of 2 batches
# at small sizes: a check that the script works end to end, not a measurement.
set -u
data=${1:?DATA_ROOT}; out=${2:?OUT_DIR}; smoke=${3:-}
mkdir -p "$out/work"
w="$out/work"
vis() { python3 -m vislab "$@"; }
# p1eval DIR TTA NAME [ARGS]: score the P1 run on DIR with one TTA into $w/NAME.json
p1eval() { local dir=$1 tta=$2 name=$3; shift 3
  vis cls eval "$w/cls-best" "$dir" "$@" "${dev[@]}" --tta "$tta" --json "$w/$name.json" >> "$w/cls-best.log" 2>&1; }
# held TTA [SIDE] / val TTA [SIDE]: the held-out split of train_50 (where a TTA and test size are
# chosen) or val_50, with one TTA, at the training side or at SIDE px
held() { p1eval "$data/p1_data/train_50" "$1" "cls-held-$1${2:+-$2}" --held-out ${2:+--image-size "$2"}; }
val() { p1eval "$data/p1_data/val_50" "$1" "cls-val-$1${2:+-$2}" ${2:+--image-size "$2"}; }
cls_extra=(); seg_extra=(); dev=(); big=256; half_extra=(--epochs 30 --batch-size 16 --precision bf16-mixed); DEADLINE=${DEADLINE:-540}  # seconds after the start (a device command gets 600)
# seedrow TASK RECIPE TRAIN VAL [ARGS]: the seed recipe from scratch in the time left, into $w/RECIPE
seedrow() { local task=$1 recipe=$2 train=$3 val=$4; shift 4
  local left=$((start + DEADLINE - $(date +%s)))  # the summary and packing come after DEADLINE
  # the budget covers training epochs only: start-up, decoding, its timing probe and the val score
  # take about 90 s more (more beside the other side's runs)
  local budget=(--budget "$(python3 -c "print(round(($left - 90) / 60, 2))")")
  # bf16 autocast on the GPU: the seed's networks and optimiser as they are, expected to fit more
  # epochs in the time (not measured; the summary names each row's precision)
  local fast=(--precision bf16-mixed)
  if [ "$smoke" = "--smoke" ]; then budget=(); fast=(); left=600; fi  # a check of the steps, not of the timing
  if [ "$left" -lt 150 ]; then echo "$recipe skipped: ${left} s left before the deadline" > "$w/$recipe.log"; return; fi
  # a device call starts with an empty OUT_DIR; one reused here holds the row an earlier call trained
  if [ -e "$w/$recipe" ]; then echo "$recipe not trained again: $w/$recipe is an earlier call's run" > "$w/$recipe.log"; return; fi
  timeout "$left" python3 -m vislab "$task" train "$train" --recipe "$recipe" --weights none --out "$w/$recipe" \
      --val-dir "$val" "${budget[@]}" "${fast[@]}" "$@" > "$w/$recipe.log" 2>&1
  echo "$recipe exit $?" >> "$w/$recipe.log"; }
if [ "$smoke" = "--smoke" ]; then
  . bench/gpu_smoke_flags.sh
  cls_extra=(--epochs 1 --limit-batches 2 "${smoke_cls[@]}")
  seg_extra=(--epochs 1 --limit-batches 2 "${smoke_seg[@]}")
  half_extra=("${seg_extra[@]}")
  dev=(--device cpu); big=80
fi
start=$(date +%s)
# an earlier campaign's flag, scores and logs in the same OUT_DIR would be read as this one's
rm -f "$w/seg-trained" "$w/seg-scored" "$w"/*.json "$w"/*.log "$w/tsne.png" "$w/tsne.csv" "$w/masks.png"
{ nvidia-smi --query-gpu=name,memory.total --format=csv,noheader 2>/dev/null || echo "no GPU (nvidia-smi failed)"; } > "$w/gpu.txt"
if [ -n "${SEEDS_ONLY:-}" ]; then
  # a later call of the same lease (bench/gpu_lease.sh seeds): the two seed rows side by side,
  # each in the whole time before DEADLINE
  ( seedrow cls cls-vgg16bn-seed "$data/p1_data/train_50" "$data/p1_data/val_50" "${cls_extra[@]}" ) & p1=$!
  ( seedrow seg seg-fcn32s-seed "$data/p2_data/train" "$data/p2_data/validation" "${seg_extra[@]}" ) & p2=$!
else
( vis cls train "$data/p1_data/train_50" --recipe cls-best --out "$w/cls-best" --val-dir "$data/p1_data/val_50" \
      "${cls_extra[@]}" > "$w/cls-best.log" 2>&1 &&
  held none && held flip && held shift && held flip "$big" && val flip && val shift && val flip "$big" &&
  vis cls tsne "$w/cls-best" "$data/p1_data/val_50" "${dev[@]}" --out "$w/tsne.png" >> "$w/cls-best.log" 2>&1
  echo "cls exit $?" >> "$w/cls-best.log"
  # not beside seg-best's training, whose 6-minute guard has little slack: wait for it to end
  while [ ! -e "$w/seg-trained" ] && [ "$(date +%s)" -lt "$((start + DEADLINE))" ]; do sleep 5; done
  seedrow cls cls-vgg16bn-seed "$data/p1_data/train_50" "$data/p1_data/val_50" "${cls_extra[@]}" ) &
p1=$!
( vis seg train "$data/p2_data/train" --recipe seg-best --out "$w/seg-best" --val-dir "$data/p2_data/validation" \
      "${seg_extra[@]}" > "$w/seg-best.log" 2>&1; ok=$?; touch "$w/seg-trained"; [ "$ok" = 0 ] &&
  vis seg score "$w/seg-best" "$data/p2_data/validation" "${dev[@]}" --no-offsets --json "$w/seg-val-plain.json" >> "$w/seg-best.log" 2>&1 &&
  vis seg score "$w/seg-best" "$data/p2_data/validation" "${dev[@]}" --tta d4 --json "$w/seg-val-offsets-d4.json" >> "$w/seg-best.log" 2>&1 &&
  vis seg progress "$w/seg-best" --out "$w/masks.png" >> "$w/seg-best.log" 2>&1
  echo "seg exit $?" >> "$w/seg-best.log"; touch "$w/seg-scored"
  seedrow seg seg-fcn32s-seed "$data/p2_data/train" "$data/p2_data/validation" "${seg_extra[@]}" ) &
p2=$!
# the 2-core-CPU recipe on the GPU beside them (half resolution, FPN / Lite1: validation 0.7255, d4
# 0.7358 after 22 CPU epochs): 30 epochs in batches of 16 under bf16; it calibrates itself, and the
# summary picks the P2 model on the held-out pairs, which both runs hold out alike (same seed)
( vis seg train "$data/p2_data/train" --recipe seg-cpu --out "$w/seg-half" --val-dir "$data/p2_data/validation" \
      "${half_extra[@]}" > "$w/seg-half.log" 2>&1 &&
  vis seg score "$w/seg-half" "$data/p2_data/validation" "${dev[@]}" --tta d4 --json "$w/seg-half-d4.json" >> "$w/seg-half.log" 2>&1
  echo "seg-half exit $?" >> "$w/seg-half.log"
  # the two P2 models and their ensemble (each member with its own scale and offsets) on the
  # held-out pairs both runs kept out (the summary picks there), and the ensemble on validation
  while [ ! -e "$w/seg-scored" ] && [ "$(date +%s)" -lt "$((start + DEADLINE))" ]; do sleep 5; done
  for m in seg-best seg-half seg-best,seg-half; do
    vis seg score "$w/${m/,/,$w/}" "$data/p2_data/train" "${dev[@]}" --held-out --json "$w/held-${m/,/+}.json" >> "$w/seg-ens.log" 2>&1
  done
  vis seg score "$w/seg-best,$w/seg-half" "$data/p2_data/validation" "${dev[@]}" --tta d4 --json "$w/seg-ens-d4.json" >> "$w/seg-ens.log" 2>&1
  echo "seg-ens exit $?" >> "$w/seg-ens.log" ) &
p3=$!
fi
# a guard for the device command's limit: whatever still runs 20 s after the deadline is stopped,
# so that the summary and the archive of what finished are still written
# (only this campaign's commands: each names a path under $w; KILL 5 s after TERM)
( sleep $((DEADLINE + 20))
  if pgrep -f -- "-m vislab .*$w/" > /dev/null; then
    echo "watchdog: stopped what still ran at $((DEADLINE + 20)) s" > "$w/watchdog.log"
    pkill -TERM -f -- "-m vislab .*$w/"; sleep 5; pkill -KILL -f -- "-m vislab .*$w/"
  fi ) &
dog=$!
wait "$p1" "$p2" ${p3:+"$p3"}
# the guard first (a TERM ends it at once, without a trap), then its sleep: ending the sleep first
# let the guard wake and write its line although nothing was left to stop
nap=$(pgrep -P "$dog"); kill "$dog" 2>/dev/null; [ -n "$nap" ] && kill $nap 2>/dev/null
end=$(date +%s)
python3 - "$w" "$((end - start))" "$big" "${SEEDS_ONLY:-}" > "$out/summary.txt" <<'PY'
import json, sys
import yaml
from pathlib import Path
w, seconds, seeds_only = Path(sys.argv[1]), sys.argv[2], bool(sys.argv[4])
print(f"campaign wall time {seconds} s; GPU: {(w / 'gpu.txt').read_text().strip()}"
      + ("; SEEDS_ONLY: the seed rows alone" if seeds_only else ""))
def read(name):  # a JSON file under the work folder, {} when it was not written
    p = w / name
    return json.loads(p.read_text()) if p.is_file() else {}
def num(name, key):
    v = read(name).get(key)
    return "missing" if v is None else f"{v:.4f}"
for run, key in () if seeds_only else (("cls-best", "holdout_acc"), ("seg-best", "holdout_miou"), ("seg-half", "holdout_miou")):
    r = read(f"{run}/results.json")
    print(f"{run}: train {r.get('train_seconds')} s, held-out {key} {r.get(key)}, stopped early: {r.get('stopped_early', 'no')}")
def best_rows() -> None:
    views = ("none", "flip", "shift", f"flip-{sys.argv[3]}")
    held = {t: num(f"cls-held-{t}.json", "accuracy") for t in views}
    print("P1 held-out accuracy (the split that chooses the TTA and test size): " + ", ".join(f"{t} {v}" for t, v in held.items()))
    vals = {"none": num("cls-best/results.json", "val_accuracy"), **{t: num(f"cls-val-{t}.json", "accuracy") for t in views[1:]}}
    print("P1 val_50 accuracy: " + ", ".join(f"{t} {v}" for t, v in vals.items()))
    scored = {t: v for t, v in held.items() if v != "missing"}
    if scored:
        pick = max(scored, key=lambda t: float(scored[t]))
        print(f"P1 chosen on held-out: {pick} (held-out {scored[pick]}) -> val_50 {vals[pick]}")
    for run, plain, d4 in (("seg-best", "seg-val-plain.json", "seg-val-offsets-d4.json"), ("seg-half", None, "seg-half-d4.json")):
        cal = read(f"{run}/results.json").get("calibration") or {}
        if cal:
            every = f", one pixel in {cal['pixel_stride']} along rows and columns" if cal.get("pixel_stride", 1) > 1 else ""
            print(f"P2 {run} held-out mIoU {cal['miou_before']:.4f} plain at scale {cal['trained_scale']:g} -> "
                  f"{cal['miou_after']:.4f} with offsets at scale {cal['infer_scale']:g} (the fit{every}"
                  + (f"; the offsets were not kept: cross-fitted {cal.get('miou_crossfit')})" if cal.get("offsets_dropped")
                     else f"; cross-fitted {cal.get('miou_crossfit')})"))
        print(f"P2 {run} validation mIoU" + (f" plain {num(plain, 'miou')}," if plain else "")
              + f" with offsets {num(f'{run}/results.json', 'val_miou')}, offsets + d4 {num(d4, 'miou')}")
    held = {m: read(f"held-{m}.json").get("miou") for m in ("seg-best", "seg-half", "seg-best+seg-half")}
    print("P2 held-out mIoU by `seg score --held-out` (offsets, no TTA): "
          + ", ".join(f"{m} {'missing' if v is None else f'{v:.4f}'}" for m, v in held.items()))
    d4 = {"seg-best": "seg-val-offsets-d4.json", "seg-half": "seg-half-d4.json", "seg-best+seg-half": "seg-ens-d4.json"}
    known = {m: v for m, v in held.items() if v is not None}
    if known:
        pick = max(known, key=known.get)
        print(f"P2 chosen among the two and their ensemble on held-out: {pick} -> validation with offsets + d4 {num(d4[pick], 'miou')}"
              f" (ensemble: {num('seg-ens-d4.json', 'miou')})")
if not seeds_only:
    best_rows()
for run, key in (("cls-vgg16bn-seed", "val_accuracy"), ("seg-fcn32s-seed", "val_miou")):
    r = read(f"{run}/results.json")
    rec = w / run / "recipe.yaml"
    prec = (yaml.safe_load(rec.read_text()) or {}).get("precision") if rec.is_file() else None
    print(f"{run} (from scratch, --weights none, precision {prec}): train {r.get('train_seconds')} s, {r.get('epochs')} epochs, "
          f"val {key} {num(f'{run}/results.json', key)}")
for log in ((() if seeds_only else ("cls-best.log", "seg-best.log", "seg-half.log"))
            + (() if seeds_only else ("seg-ens.log",)) + ("cls-vgg16bn-seed.log", "seg-fcn32s-seed.log", "watchdog.log")):
    tail = (w / log).read_text().strip().splitlines()[-1:] if (w / log).is_file() else ["not triggered" if log == "watchdog.log" else "missing"]
    print(f"{log}: {tail[0]}")
PY
tar -czf "$out/campaign.tar.gz" -C "$w" --exclude='*.ckpt' --exclude='*.npz' --exclude='tensorboard' --exclude='snapshots' --exclude='*.pt' .
cat "$out/summary.txt"
