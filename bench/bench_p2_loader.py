"""P2 training input cost per sample: vislab (decoded once into a mapped cache, sliced, augmented
as a batch on the device) vs the PIL dataset of the reference training loop (bench_train.py),
one thread, same tiles; and the process's anonymous memory as the number of tiles grows.

    python bench/bench_p2_loader.py [--images 60] [--recipes seg-best seg-cpu] [--rss-tiles 2000 8000]

Per sample, vislab's loader slices the cache and the training device scales/crops, flips and
turns (one grid_sample per batch) and jitters colours; all of it is timed here on this CPU, in
batches of the recipe's size. The reference decodes the JPEG and PNG with PIL, crops at random
and flips (no scale or colour augmentation: it does less). The cache's one-time build is timed
apart. Memory: a fresh process builds the cache for N tiles (the course's tiles repeated),
then runs one epoch of batches through the augmentation, reading RssAnon (mapped cache pages
are file pages and do not count) after every batch.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_train import PilSegmentation  # noqa: E402
from common import DEFAULT_DATA, best_of, peak_rss_mb  # noqa: E402

from vislab.config import load_recipe  # noqa: E402
from vislab.data.tensors import normalize  # noqa: E402
from vislab.data.seg_classes import deepglobe  # noqa: E402
from vislab.data.segmentation import (CachedTiles, TileCache, augment_tiles, jitter_colours, list_pairs,  # noqa: E402
                                      pad_collate)


def rss_anon_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("RssAnon:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def loader_side(ds: CachedTiles, batch: int) -> list:
    """What a loader worker does per epoch: slice the cache and collate."""
    return [pad_collate([ds[i] for i in range(lo, min(lo + batch, len(ds)))])
            for lo in range(0, len(ds), batch)]


def device_side(batches: list, crop: int | None, epoch: int = 0, on_batch=None) -> None:
    """What the training device does to each batch before the network: geometry, colour, normalise."""
    for x, y, idx, hw in batches:
        x, y = augment_tiles(x, y, idx, hw, seed=0, epoch=epoch, crop_size=crop)
        normalize(jitter_colours(x, idx, seed=0, epoch=epoch), (0.5,) * 3, (0.5,) * 3)
        if on_batch:
            on_batch()


def one_epoch(ds: CachedTiles, batch: int, crop: int | None, epoch: int = 0, on_batch=None) -> None:
    """Both sides, one batch at a time."""
    for lo in range(0, len(ds), batch):
        sub = CachedTiles(ds.cache, ds.indices[lo : lo + batch])
        device_side(loader_side(sub, batch), crop, epoch, on_batch)


def rss_child(folder: Path, n: int, crop: int) -> None:
    """Runs in a fresh process: build the cache for ``n`` tiles, one epoch, print the memory."""
    torch.set_num_threads(1)
    base = list_pairs(folder)
    pairs = [base[i % len(base)] for i in range(n)]
    start = rss_anon_mb()
    t0 = time.perf_counter()
    cache = TileCache(pairs, [(512, 512)] * n, deepglobe(), expected=(512, 512))
    built = time.perf_counter() - t0
    after_build = rss_anon_mb()
    peak = [after_build]
    t0 = time.perf_counter()
    one_epoch(CachedTiles(cache, list(range(n))), 8, crop, on_batch=lambda: peak.append(rss_anon_mb()))
    print(json.dumps({"tiles": n, "build_s": built, "epoch_s": time.perf_counter() - t0, "start_mb": start,
                      "after_build_mb": after_build, "peak_mb": max(peak)}))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", type=Path, default=DEFAULT_DATA)
    ap.add_argument("--images", type=int, default=60)
    ap.add_argument("--recipes", nargs="+", default=["seg-best", "seg-cpu"])
    ap.add_argument("--rss-tiles", type=int, nargs="*", default=[2000, 8000])
    ap.add_argument("--rss-child", type=int, default=0, help=argparse.SUPPRESS)
    args = ap.parse_args()
    folder = args.data / "p2_data" / "train"
    if args.rss_child:
        rss_child(folder, args.rss_child, 256)
        return
    torch.set_num_threads(1)
    pairs = list_pairs(folder)[: args.images]
    n = len(pairs)
    cache_root = Path(tempfile.mkdtemp(prefix="vislab-bench-cache-"))
    os.environ["VISLAB_CACHE"] = str(cache_root)
    try:
        t0 = time.perf_counter()
        cache = TileCache(pairs, [(512, 512)] * n, deepglobe(), expected=(512, 512), workers=1)
        t_build = (time.perf_counter() - t0) / n * 1000
        print(f"{n} training tiles of {folder}, 1 thread; best of 3 passes; cache built once in "
              f"{t_build:.1f} ms/tile (1 process)")
        ratios = []
        for name in args.recipes:
            r = load_recipe(name)
            ds = CachedTiles(cache, list(range(n)))
            ref = PilSegmentation(folder, r)
            ref.images = ref.images[:n]
            t_load = best_of(lambda: loader_side(ds, r.batch_size)) / n * 1000
            batches = loader_side(ds, r.batch_size)
            t_dev = best_of(lambda: device_side(batches, r.crop_size)) / n * 1000
            t_ref = best_of(lambda: [ref[i] for i in range(n)]) / n * 1000
            print(f"{name:<9} crop {r.crop_size}: vislab loader {t_load:6.3f} ms/sample (slice + collate), on the "
                  f"device {t_dev:5.1f} ms/sample here on this CPU (scale/crop/flip/turn + colour jitter + "
                  f"normalise, batches of {r.batch_size});   reference loader {t_ref:5.1f} ms/sample "
                  f"(PIL decode + crop + flips)")
            ratios.append((name, t_ref / t_load, t_ref / (t_load + t_dev)))
        print(f"peak RSS {peak_rss_mb():.0f} MB")
        mem = []
        for tiles in args.rss_tiles:
            proc = subprocess.run([sys.executable, __file__, "--data", str(args.data), "--rss-child", str(tiles)],
                                  capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
            if proc.returncode:
                sys.exit(proc.stderr[-2000:])
            res = json.loads(proc.stdout.strip().splitlines()[-1])
            mem.append(res)
            print(f"{tiles:>6} tiles: cache build {res['build_s']:.0f} s, one epoch at 256 px crops "
                  f"{res['epoch_s']:.0f} s; RssAnon {res['start_mb']:.0f} MB at start, {res['after_build_mb']:.0f} "
                  f"MB after the build, peak {res['peak_mb']:.0f} MB")
            for f in cache_root.glob("seg-*"):
                f.unlink()
        line = ("RATIO p2_loader loader work per sample: " + " ".join(f"{k} {v:.0f}x" for k, v, _ in ratios)
                + " less than the reference's; with the device's augmentation also on this CPU: "
                + " ".join(f"{k} {w:.2f}x" for k, _, w in ratios))
        if len(mem) >= 2:
            line += (f"; peak RssAnon {mem[0]['peak_mb']:.0f} MB at {mem[0]['tiles']} tiles, "
                     f"{mem[-1]['peak_mb']:.0f} MB at {mem[-1]['tiles']} ({mem[-1]['peak_mb'] / mem[0]['peak_mb']:.2f}x)")
        print(line)
    finally:
        shutil.rmtree(cache_root, ignore_errors=True)


if __name__ == "__main__":
    main()
