"""Classification cache at scale: does the process's own memory stay flat as the folder grows?

For each N, N generated 32x32 RGB PNGs in an ImageFolder tree (``ROOT/<class>/<index>.png``, 10
classes; generated once in a process pool and reused from ``--work``) are read by:

- vislab build: ``load_folder(root, labelled=True)`` with an empty ``$VISLAB_CACHE`` (a sample of
  headers read, every image decoded by forked workers into the memory-mapped ``.npy`` cache; the
  workers' summed Pss_Anon is reported in its own column), then one pass over
  every image in shuffled batches of 256 (``data.images[idx]`` to float in [0, 1], as training
  reads it);
- vislab warm: the same with the cache already filled (what every later run pays);
- ImageFolder: torchvision ``ImageFolder`` + PIL + ``ToTensor`` through a ``DataLoader`` (batch
  256, shuffle), one epoch, ``num_workers`` 0 (and each of ``--workers``);
- in-memory: ``load_folder(..., use_cache=False)``, vislab's fallback that decodes the whole
  folder into one tensor in memory (as vislab did before the cache), then the same pass.

Each side runs in a fresh process (forked from this one once it has imported torch, so the
import is paid once; peaks are per side). A thread samples ``RssAnon`` (/proc/self/status: the
anonymous memory; mapped file pages do not count) every 2 ms; "grow" is the peak minus
``RssAnon`` just before the side starts. DataLoader workers are reported apart: the peak of
their summed ``Pss_Anon`` (smaps_rollup, pages shared with the parent split between them).
Every PNG is read once before the sides run so that all of them read from the page cache.
Generated images stay in ``--work`` (default bench/.out/cls_cache, git-ignored) for the next run.

    python bench/bench_cls_cache.py [--sizes 10000,100000] [--workers 2] [--work DIR] [--quick]
"""

from __future__ import annotations

import argparse
import gc
import multiprocessing as mp
import os
import shutil
import sys
import threading
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
CLASSES = 10
SIDE = 32
BATCH = 256
GEN_VERSION = "v1"  # change when the generated content changes


# --- data ----------------------------------------------------------------------------------


def image_path(root: Path, i: int) -> Path:
    return root / f"class_{i % CLASSES:02d}" / f"{i:07d}.png"


def _write_images(job: tuple[str, int, int]) -> int:
    """Images start..stop-1 of the tree at ``root``: a smooth per-class colour field (a random
    4x4 grid upsampled), a few random rectangles and noise, so they compress like photos do
    rather than like noise or flat colour."""
    from PIL import Image

    root, start, stop = Path(job[0]), job[1], job[2]
    for i in range(start, stop):
        rng = np.random.default_rng(i)
        c = i % CLASSES
        base = np.array([(37 * c) % 256, (91 * c + 40) % 256, (151 * c + 80) % 256], np.float32)
        grid = np.clip(base + rng.normal(0, 40, (4, 4, 3)), 0, 255).astype(np.uint8)
        img = np.asarray(Image.fromarray(grid).resize((SIDE, SIDE), Image.Resampling.BILINEAR), np.float32)
        for _ in range(int(rng.integers(1, 4))):
            y, x = rng.integers(0, SIDE - 4, 2)
            h, w = rng.integers(3, 14, 2)
            img[y : y + h, x : x + w] = rng.integers(0, 256, 3)
        img += rng.normal(0, 6, img.shape)
        Image.fromarray(np.clip(img, 0, 255).astype(np.uint8)).save(image_path(root, i), format="PNG")
    return stop - start


def ensure_images(work: Path, n: int) -> Path:
    """The tree of ``n`` images under ``work``, generated unless a complete one is there."""
    root = work / f"images-{n}"
    done = work / f"images-{n}.done"
    if done.is_file() and done.read_text() == GEN_VERSION:
        return root
    if root.exists():
        shutil.rmtree(root)
    for c in range(CLASSES):
        (root / f"class_{c:02d}").mkdir(parents=True)
    t0 = time.perf_counter()
    step = 500
    jobs = [(str(root), s, min(n, s + step)) for s in range(0, n, step)]
    with mp.get_context("fork").Pool(os.cpu_count() or 1) as pool:
        sum(pool.imap_unordered(_write_images, jobs))
    done.write_text(GEN_VERSION)
    print(f"generated {n} images in {root} ({time.perf_counter() - t0:.1f} s)", flush=True)
    return root


def read_all(root: Path) -> int:
    """Read every file once (puts them in the page cache); their total size in bytes."""
    total = 0
    for d in sorted(root.iterdir()):
        for f in os.scandir(d):
            with open(f.path, "rb") as fh:
                total += len(fh.read())
    return total


# --- memory --------------------------------------------------------------------------------


def status_kb(field: str, pid: str = "self") -> int:
    with open(f"/proc/{pid}/status") as fh:
        for line in fh:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    return 0


def descendants(pid: int) -> list[int]:
    out: list[int] = []
    try:
        for tid in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{tid}/children") as fh:
                for child in fh.read().split():
                    out.append(int(child))
                    out.extend(descendants(int(child)))
    except OSError:
        pass
    return out


def pss_anon_kb(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/smaps_rollup") as fh:
            for line in fh:
                if line.startswith("Pss_Anon:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


class AnonSampler(threading.Thread):
    """Peak RssAnon of this process (and, with ``children``, of its descendants' summed
    Pss_Anon), sampled every ``interval`` seconds."""

    def __init__(self, interval: float = 0.002, children: bool = False) -> None:
        super().__init__(daemon=True)
        self.interval, self.children = interval, children
        self.peak_kb = 0
        self.children_peak_kb = 0
        self._done = threading.Event()

    def run(self) -> None:
        i = 0
        me = os.getpid()
        while not self._done.is_set():
            self.sample()
            if self.children and i % 10 == 0:
                kids = descendants(me)
                self.children_peak_kb = max(self.children_peak_kb, sum(pss_anon_kb(p) for p in kids))
            i += 1
            self._done.wait(self.interval)

    def sample(self) -> int:
        kb = status_kb("RssAnon")
        self.peak_kb = max(self.peak_kb, kb)
        return kb

    def stop(self) -> None:
        self._done.set()
        self.join()
        self.sample()


# --- the sides (each runs in a fresh forked process) ------------------------------------------


def _pass(images, labels, n: int) -> float:
    """Seconds for one shuffled pass over every image in batches, to float [0, 1] (ToTensor's)."""
    import torch

    order = torch.randperm(n, generator=torch.Generator().manual_seed(0))
    t0 = time.perf_counter()
    for s in range(0, n, BATCH):
        idx = order[s : s + BATCH]
        x = images[idx].float().div_(255)
        y = labels[idx]
        del x, y
    return time.perf_counter() - t0


def side_vislab(root: Path, cache: Path, use_cache: bool, sampler: AnonSampler) -> dict:
    from vislab.data.classification import load_folder

    os.environ["VISLAB_CACHE"] = str(cache)
    t0 = time.perf_counter()
    data = load_folder(root, labelled=True, use_cache=use_cache)
    t_load = time.perf_counter() - t0
    after_load = sampler.sample()
    load_peak = sampler.peak_kb
    sampler.peak_kb = after_load  # from here on the sampler's peak is the pass's
    n = len(data.files)
    t_pass = _pass(data.images, data.labels, n)
    pass_peak = sampler.sample()
    pass_peak = max(pass_peak, sampler.peak_kb)
    sampler.peak_kb = max(load_peak, pass_peak)
    return {"n": n, "t_load": t_load, "t_pass": t_pass, "pass_grow_kb": pass_peak - after_load,
            "mapped": _is_mapped(data.images)}


def _is_mapped(t) -> bool:
    """Whether the tensor's storage lies in a file mapping (listed with a path in /proc/self/maps)."""
    addr = t.untyped_storage().data_ptr()
    with open("/proc/self/maps") as fh:
        for line in fh:
            parts = line.split()
            lo, hi = (int(v, 16) for v in parts[0].split("-"))
            if lo <= addr < hi:
                return len(parts) >= 6 and parts[5].startswith("/")
    return False


def side_breakdown(root: Path, cache: Path) -> dict:
    """Where a cache-hit load spends its time: listing the tree, hashing the file list."""
    from vislab.data.cache import file_list_key
    from vislab.data.layouts import find_items

    os.environ["VISLAB_CACHE"] = str(cache)
    t0 = time.perf_counter()
    items = find_items(root, labelled=True)
    t1 = time.perf_counter()
    file_list_key(items.files)
    t2 = time.perf_counter()
    return {"n": len(items.files), "t_find_items": t1 - t0, "t_file_list_key": t2 - t1}


def side_imagefolder(root: Path, workers: int) -> dict:
    import torch
    from torch.utils.data import DataLoader
    from torchvision import datasets, transforms

    t0 = time.perf_counter()
    ds = datasets.ImageFolder(str(root), transform=transforms.ToTensor())
    t_index = time.perf_counter() - t0
    loader = DataLoader(ds, batch_size=BATCH, shuffle=True, num_workers=workers,
                        generator=torch.Generator().manual_seed(0))
    t0 = time.perf_counter()
    n = 0
    for x, y in loader:
        n += len(y)
        del x, y
    return {"n": n, "t_load": t_index, "t_pass": time.perf_counter() - t0}


def run_side(kind: str, args: dict, conn) -> None:
    try:
        gc.collect()
        # children: DataLoader workers, and vislab's forked decode workers while the cache is built
        sampler = AnonSampler(children=(kind == "imagefolder" and args["workers"] > 0) or kind == "vislab")
        base = sampler.sample()
        sampler.start()
        if kind == "vislab":
            res = side_vislab(Path(args["root"]), Path(args["cache"]), args["use_cache"], sampler)
        elif kind == "breakdown":
            res = side_breakdown(Path(args["root"]), Path(args["cache"]))
        else:
            res = side_imagefolder(Path(args["root"]), args["workers"])
        sampler.stop()
        res.update(base_kb=base, peak_kb=sampler.peak_kb, end_kb=status_kb("RssAnon"),
                   workers_peak_kb=sampler.children_peak_kb, hwm_kb=status_kb("VmHWM"),
                   rss_file_kb=status_kb("RssFile"))
        conn.send(("ok", res))
    except BaseException as exc:  # noqa: BLE001 - reported by the parent
        import traceback

        conn.send(("error", f"{exc.__class__.__name__}: {exc}\n{traceback.format_exc()}"))
    finally:
        conn.close()


def in_fresh_process(kind: str, **args) -> dict:
    ctx = mp.get_context("fork")
    parent, child = ctx.Pipe(duplex=False)
    proc = ctx.Process(target=run_side, args=(kind, args, child))
    proc.start()
    child.close()
    status, res = parent.recv()
    proc.join()
    if status != "ok":
        sys.exit(f"{kind} {args} failed:\n{res}")
    return res


# --- report --------------------------------------------------------------------------------


def mb(kb: float) -> float:
    return kb / 1024


def grow(r: dict) -> float:
    return mb(r["peak_kb"] - r["base_kb"])


def ratio(a: float, b: float) -> str:
    return f"{a / b:.2f}" if b > 0 else "inf"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sizes", default="10000,100000", help="comma-separated image counts")
    ap.add_argument("--workers", default="2", help="DataLoader num_workers besides 0 for the reference "
                    "(comma-separated; '' for none)")
    ap.add_argument("--work", type=Path, default=HERE / ".out" / "cls_cache",
                    help="generated images and caches (images are reused between runs)")
    ap.add_argument("--quick", action="store_true", help="tiny sizes, fewer sides: checks the script runs")
    args = ap.parse_args()
    if args.quick:
        args.sizes, args.workers = "500,2000", ""
    sizes = [int(s) for s in args.sizes.split(",") if s.strip()]
    workers = [0] + [int(w) for w in args.workers.split(",") if w.strip() and int(w) > 0]
    args.work.mkdir(parents=True, exist_ok=True)
    t_start = time.perf_counter()
    roots = {n: ensure_images(args.work, n) for n in sizes}  # before torch: light forks

    import torch  # noqa: F401 - imported once here, inherited by every forked side
    import torchvision  # noqa: F401
    from torchvision import datasets  # noqa: F401

    import vislab.data.classification  # noqa: F401

    print(f"CPUs {len(os.sched_getaffinity(0))}, torch threads {torch.get_num_threads()}, images {SIDE}x{SIDE} RGB PNG, "
          f"{CLASSES} classes (ImageFolder tree), batch {BATCH}; RssAnon sampled every 2 ms; "
          "grow = peak - RssAnon at the side's start", flush=True)
    results: dict[int, dict[str, dict]] = {}
    for n in sizes:
        root = roots[n]
        nbytes = read_all(root)
        cache = args.work / f"cache-{n}"
        mem_cache = args.work / f"cache-{n}-nocache"
        for d in (cache, mem_cache):
            shutil.rmtree(d, ignore_errors=True)
        r: dict[str, dict] = {}
        r["vislab build"] = in_fresh_process("vislab", root=str(root), cache=str(cache), use_cache=True)
        if not args.quick:
            r["vislab warm"] = in_fresh_process("vislab", root=str(root), cache=str(cache), use_cache=True)
            br = in_fresh_process("breakdown", root=str(root), cache=str(cache))
        for w in workers:
            r[f"ImageFolder w={w}"] = in_fresh_process("imagefolder", root=str(root), workers=w)
        r["in-memory"] = in_fresh_process("vislab", root=str(root), cache=str(mem_cache), use_cache=False)
        cache_mb = sum(f.stat().st_size for f in cache.glob("*.npy")) / 2**20
        for d in (cache, mem_cache):  # rebuilt on every run anyway; the images are what is reused
            shutil.rmtree(d, ignore_errors=True)
        results[n] = r

        print(f"\n== N = {n} images ({nbytes / 2**20:.0f} MB of PNG; decoded uint8 {n * 3 * SIDE * SIDE / 2**20:.0f} MB, "
              f"cache file {cache_mb:.0f} MB)")
        print(f"{'side':<18}{'load s':>8}{'load img/s':>12}{'pass s':>8}{'pass img/s':>12}{'total img/s':>12}"
              f"{'base MB':>9}{'peak MB':>9}{'grow MB':>9}{'pass grow':>10}{'end MB':>8}{'workers MB':>11}{'VmHWM MB':>10}")
        for name, x in r.items():
            assert x["n"] == n, (name, x["n"], n)
            tl, tp = x["t_load"], x["t_pass"]
            wk = f"{mb(x['workers_peak_kb']):.0f}" if x["workers_peak_kb"] else "-"
            pg = f"{mb(x['pass_grow_kb']):.1f}" if "pass_grow_kb" in x else "-"
            print(f"{name:<18}{tl:>8.2f}{n / tl:>12.0f}{tp:>8.2f}{n / tp:>12.0f}{n / (tl + tp):>12.0f}"
                  f"{mb(x['base_kb']):>9.0f}{mb(x['peak_kb']):>9.0f}{grow(x):>9.1f}{pg:>10}{mb(x['end_kb']):>8.0f}{wk:>11}"
                  f"{mb(x['hwm_kb']):>10.0f}")
        print(f"vislab images file-mapped: build {r['vislab build']['mapped']}, in-memory {r['in-memory']['mapped']}")
        print("(ImageFolder: load = building the dataset index, pass = one DataLoader epoch; "
              "vislab: load = load_folder, pass = shuffled batches from data.images; "
              "pass grow = RssAnon peak during the pass over RssAnon after load_folder)")
        if not args.quick:
            print(f"cache-hit load_folder breakdown: find_items {br['t_find_items']:.2f} s, "
                  f"file_list_key {br['t_file_list_key']:.2f} s; whole warm load {r['vislab warm']['t_load']:.2f} s")
        ref = r["ImageFolder w=0"]
        ref_rate = n / (ref["t_load"] + ref["t_pass"])
        b = r["vislab build"]
        print(f"RATIO cls_cache_build/{n}: vislab cache build {n / b['t_load']:.0f} img/s vs ImageFolder epoch "
              f"{ref_rate:.0f} img/s = {n / b['t_load'] / ref_rate:.2f}x")
        print(f"RATIO cls_cache_pass/{n}: vislab cached pass {n / b['t_pass']:.0f} img/s vs ImageFolder epoch "
              f"{ref_rate:.0f} img/s = {n / b['t_pass'] / ref_rate:.2f}x")
        first = n / (b["t_load"] + b["t_pass"])
        print(f"RATIO cls_cache_first_epoch/{n}: vislab build + pass {first:.0f} img/s vs ImageFolder epoch "
              f"{ref_rate:.0f} img/s = {first / ref_rate:.2f}x")
        if "vislab warm" in r:
            wv = r["vislab warm"]
            rate = n / (wv["t_load"] + wv["t_pass"])
            print(f"RATIO cls_cache_warm_epoch/{n}: vislab cache-hit load + pass {rate:.0f} img/s vs ImageFolder "
                  f"epoch {ref_rate:.0f} img/s = {rate / ref_rate:.2f}x")

    if len(sizes) >= 2:
        lo, hi = sizes[0], sizes[-1]
        a, b = results[lo], results[hi]

        def span(name: str) -> str:
            return (f"{grow(a[name]):.1f} -> {grow(b[name]):.1f} MB "
                    f"(x{ratio(grow(b[name]), grow(a[name]))})")

        print(f"\nRATIO cls_cache_rss_anon_grow: {lo} -> {hi} images ({hi / lo:.0f}x): vislab build {span('vislab build')}, "
              + (f"vislab warm {span('vislab warm')}, " if "vislab warm" in a else "")
              + f"in-memory baseline {span('in-memory')}, ImageFolder w=0 {span('ImageFolder w=0')}")
        print(f"RATIO cls_cache_rss_anon_peak: {lo} -> {hi} images: vislab build {mb(a['vislab build']['peak_kb']):.0f} -> "
              f"{mb(b['vislab build']['peak_kb']):.0f} MB, in-memory baseline {mb(a['in-memory']['peak_kb']):.0f} -> "
              f"{mb(b['in-memory']['peak_kb']):.0f} MB, ImageFolder w=0 {mb(a['ImageFolder w=0']['peak_kb']):.0f} -> "
              f"{mb(b['ImageFolder w=0']['peak_kb']):.0f} MB")
    print(f"\nwall {time.perf_counter() - t_start:.0f} s")


if __name__ == "__main__":
    main()
