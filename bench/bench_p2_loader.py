"""P2 training loader work per sample: vislab's SegmentationDataset vs the PIL dataset of the
reference training loop (bench_train.py), one thread, same tiles.

    python bench/bench_p2_loader.py [--images 60] [--recipes seg-best seg-cpu]

On a GPU, P2 training is bound by the loader workers (16 cores feed an H100 at a few hundred
512 px tiles/s), so the milliseconds a worker spends per sample set the ceiling:
workers x 1000 / ms tiles/s. vislab's workers decode, crop/scale, flip and turn; its colour
jitter runs batched on the training device (timed here on this CPU too, per image, for
scale). The reference decodes with PIL, crops at random and flips (no scale or colour
augmentation).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_train import PilSegmentation  # noqa: E402
from common import DEFAULT_DATA, best_of, peak_rss_mb  # noqa: E402

from vislab.config import load_recipe  # noqa: E402
from vislab.data.segmentation import SegmentationDataset, jitter_colours, list_pairs  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", type=Path, default=DEFAULT_DATA)
    ap.add_argument("--images", type=int, default=60)
    ap.add_argument("--recipes", nargs="+", default=["seg-best", "seg-cpu"])
    args = ap.parse_args()
    torch.set_num_threads(1)
    folder = args.data / "p2_data" / "train"
    pairs = list_pairs(folder)[: args.images]
    n = len(pairs)
    print(f"{n} training tiles of {folder}, 1 thread; best of 3 passes")
    ratios = []
    for name in args.recipes:
        r = load_recipe(name)
        mine = SegmentationDataset(pairs, train=True, crop_size=r.crop_size, seed=r.seed, rot90=r.rot90,
                                   crop_area=r.crop_area)
        ref = PilSegmentation(folder, r)
        ref.images = ref.images[:n]
        t_mine = best_of(lambda: [mine[(i, 0)] for i in range(n)]) / n * 1000
        t_ref = best_of(lambda: [ref[i] for i in range(n)]) / n * 1000
        x = torch.stack([mine[(i, 0)][0] for i in range(min(n, 16))])
        idx = torch.arange(len(x))
        t_jit = best_of(lambda: jitter_colours(x, idx, seed=0, epoch=0)) / len(x) * 1000
        print(f"{name:<9} crop {r.crop_size}: vislab {t_mine:5.1f} ms/sample in the worker "
              f"(+ {t_jit:4.1f} ms of colour jitter on the device, here this CPU)   "
              f"reference {t_ref:5.1f} ms/sample   8 workers: {8000 / t_mine:5.0f} vs {8000 / t_ref:5.0f} tiles/s")
        ratios.append((name, t_ref / t_mine))
    print(f"peak RSS {peak_rss_mb():.0f} MB")
    print("RATIO p2_loader " + " ".join(f"{k} {v:.2f}x" for k, v in ratios)
          + " the reference's samples/s per worker")


if __name__ == "__main__":
    main()
