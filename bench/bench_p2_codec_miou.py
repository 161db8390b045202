"""P2 mask decoding/encoding and the course mIoU over the validation masks.

Codec: vislab's table lookup vs a per-pixel Python loop (the published solutions) and a
straightforward numpy version. mIoU: vislab's pooled bincount confusion matrix vs a per-image
Python loop over classes with numpy comparisons.

    python bench/bench_p2_codec_miou.py [--data DIR] [--limit N] [--loop-pixels N]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).parent))
from common import DEFAULT_DATA, best_of, peak_rss_mb  # noqa: E402

from vislab.data.images import read_rgb  # noqa: E402
from vislab.data.palette import classes_to_mask, mask_to_classes  # noqa: E402
from vislab.data.seg_classes import refuse_off_code  # noqa: E402
from vislab.metrics import confusion_matrix, course_miou  # noqa: E402

COLOUR_TO_CLASS = {3: 0, 6: 1, 5: 2, 2: 3, 1: 4, 7: 5, 0: 6, 4: 6}


def loop_decode(rgb: np.ndarray) -> np.ndarray:
    """Per-pixel Python loop (H, W, 3) -> (H, W)."""
    h, w, _ = rgb.shape
    out = np.empty((h, w), np.uint8)
    for y in range(h):
        for x in range(w):
            r, g, b = rgb[y, x]
            out[y, x] = COLOUR_TO_CLASS[4 * (r >= 128) + 2 * (g >= 128) + (b >= 128)]
    return out


def numpy_decode(rgb: np.ndarray) -> np.ndarray:
    m = (rgb >= 128).astype(np.int64)
    code = 4 * m[..., 0] + 2 * m[..., 1] + m[..., 2]
    out = np.full(code.shape, 6, np.uint8)
    for k, c in COLOUR_TO_CLASS.items():
        out[code == k] = c
    return out


def loop_miou(preds: list[np.ndarray], labels: list[np.ndarray]) -> float:
    tp = np.zeros(6)
    tp_fp = np.zeros(6)
    tp_fn = np.zeros(6)
    for p, t in zip(preds, labels):
        for c in range(6):
            tp_fp[c] += np.sum(p == c)
            tp_fn[c] += np.sum(t == c)
            tp[c] += np.sum((p == c) & (t == c))
    with np.errstate(invalid="ignore"):  # a class absent from a small subset: 0/0, left out as in vislab
        return float(np.nanmean(tp / (tp_fp + tp_fn - tp)))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", type=Path, default=DEFAULT_DATA)
    ap.add_argument("--limit", type=int, default=None)
    ap.add_argument("--loop-pixels", type=int, default=64 * 512, help="pixels the slow loop decodes (it is then scaled)")
    args = ap.parse_args()
    files = sorted((args.data / "p2_data" / "validation").glob("*_mask.png"))[: args.limit]
    rgbs = [read_rgb(f) for f in files]
    nps = [r.permute(1, 2, 0).numpy() for r in rgbs]
    pixels = sum(r.shape[1] * r.shape[2] for r in rgbs)

    t_vis = best_of(lambda: [mask_to_classes(r) for r in rgbs])
    t_np = best_of(lambda: [numpy_decode(a) for a in nps], repeat=1)
    rows = max(1, args.loop_pixels // nps[0].shape[1])
    t_loop_part = best_of(lambda: loop_decode(nps[0][:rows]), repeat=1)
    t_loop = t_loop_part * pixels / (rows * nps[0].shape[1])
    ids = [mask_to_classes(r)[0] for r in rgbs]
    assert all(np.array_equal(numpy_decode(a), i.numpy()) for a, i in zip(nps[:5], ids[:5]))
    t_enc = best_of(lambda: [classes_to_mask(i) for i in ids])
    t_check = best_of(lambda: [refuse_off_code(r, f) for r, f in zip(rgbs, files)])  # a course mask's colours checked
    print(f"{len(files)} masks, {pixels / 1e6:.1f} Mpixels, peak RSS {peak_rss_mb():.0f} MB")
    print(f"decode: vislab {t_vis:.3f} s, numpy {t_np:.3f} s, python loop {t_loop:.1f} s "
          f"(extrapolated from {rows} rows); encode: vislab {t_enc:.3f} s")

    preds = [torch.roll(i, 7, 1) for i in ids]
    pn, ln = [p.numpy() for p in preds], [i.numpy() for i in ids]

    def vis_miou() -> float:
        conf = torch.zeros(7, 7, dtype=torch.long)
        for p, t in zip(preds, ids):
            conf += confusion_matrix(t, p, 7)
        return course_miou(conf)

    t_m_vis = best_of(vis_miou)
    t_m_loop = best_of(lambda: loop_miou(pn, ln), repeat=1)
    assert abs(vis_miou() - loop_miou(pn, ln)) < 1e-9
    print(f"mIoU: vislab {t_m_vis:.3f} s, per-image loop {t_m_loop:.3f} s")
    print(f"RATIO p2_decode vs_python_loop {t_loop / t_vis:.0f}x vs_numpy {t_np / t_vis:.1f}x")
    print(f"RATIO p2_miou vs_per_image_loop {t_m_loop / t_m_vis:.1f}x")
    print(f"RATIO p2_colour_check share_of_decode {100 * t_check / t_vis:.0f}%")


if __name__ == "__main__":
    main()
