"""How a segmentation run scores at several evaluation scales, alone and averaged (multi-scale
test-time augmentation), with and without its calibrated class offsets.

    python bench/seg_scales.py RUN PAIRS_DIR [--tta flip] [--scales 0.5,0.625,0.75,1.0]

For each pair the class probabilities are computed once per scale (with the TTA views), then
every subset of the scales is scored by averaging its probabilities: one line per subset, best
first, as ``scales  offsets <mIoU>  plain <mIoU>``. Choosing a subset on a validation set and
reporting it there is selection on the test data: use the held-out pairs to choose.
"""

from __future__ import annotations

import argparse
import itertools
import time
from pathlib import Path

import torch

from vislab.calibration import apply_offsets, load_segmenter
from vislab.data.images import read_rgb
from vislab.data.seg_classes import IGNORE
from vislab.data.segmentation import list_pairs
from vislab.metrics import confusion_matrix
from vislab.data.seg_classes import classes_of
from vislab.pipelines.seg_predict import predict_probs


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run", type=Path)
    ap.add_argument("pairs", type=Path)
    ap.add_argument("--tta", default="flip")
    ap.add_argument("--scales", default="0.5,0.625,0.75,1.0")
    a = ap.parse_args()
    scales = [float(v) for v in a.scales.split(",")]
    model, meta = load_segmenter(a.run)
    model.eval()
    desc = classes_of(meta)
    off = torch.tensor(meta["class_offsets"]) if meta.get("class_offsets") else None
    combos = [c for r in range(1, len(scales) + 1) for c in itertools.combinations(scales, r)]
    k = desc.num_classes
    conf = {(c, o): torch.zeros(k, k, dtype=torch.long) for c in combos for o in (True, False)}
    t0 = time.perf_counter()
    pairs = list_pairs(a.pairs)
    for n, pair in enumerate(pairs, 1):
        img = read_rgb(pair.image)
        truth, _ = desc.read_mask(pair.mask, tuple(img.shape[1:]))
        probs = {}
        for s in scales:
            model.scale = s
            probs[s] = predict_probs(model, meta, img[None], tta=a.tta)
        for c in combos:
            p = sum(probs[s] for s in c) / len(c)
            conf[c, True] += confusion_matrix(truth, apply_offsets(p, off)[0], k, ignore_index=IGNORE)
            conf[c, False] += confusion_matrix(truth, p.argmax(1)[0], k, ignore_index=IGNORE)
        if n % 50 == 0:
            print(f"{n}/{len(pairs)} pairs, {time.perf_counter() - t0:.0f} s", flush=True)
    rows = sorted(((desc.miou(conf[c, True]), desc.miou(conf[c, False]), c) for c in combos), reverse=True)
    print(f"{a.run} on {a.pairs}, {a.tta} views; offsets: {'calibrated' if off is not None else 'none stored'}")
    for with_off, plain, c in rows:
        print(f"{','.join(f'{s:g}' for s in c):<24} offsets {with_off:.4f}  plain {plain:.4f}")


if __name__ == "__main__":
    main()
