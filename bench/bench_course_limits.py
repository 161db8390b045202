"""The course's time limits on this machine: scripts/hw1_1.sh on 5,000 32x32 images and
scripts/hw1_2.sh on 313 512x512 images must each finish in under 10 minutes.

    python bench/bench_course_limits.py [--p1-ckpt CKPT] [--p2-ckpt CKPT] [--p1-images 5000] [--p2-images 313]

The test sets are made from the real data by re-encoding: P1 takes the 2,500 val_50 images and
then train_50 images in name order, decodes each and saves it again as PNG under a label-free
name (00000.png ...); P2 takes the 257 validation tiles and then training tiles, decoded and
saved again as JPEG (quality 95) as 0000.jpg .... Without --p1-ckpt/--p2-ckpt the scripts get
checkpoints of the cls-cpu / seg-cpu networks at their initial weights (time does not depend on
the values). Each script runs cold, as a grader would: a fresh process and an empty vislab
cache, so loading, decoding and the ONNX export are all inside the time. The reference in the
same run is the same command with --engine torch; the RATIO lines give the limit over the time.
"""

from __future__ import annotations

import argparse
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import DEFAULT_DATA, recipe_checkpoint  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
LIMIT_S = 600.0


def make_p1(data: Path, out: Path, n: int) -> Path:
    out.mkdir(parents=True)
    src = sorted((data / "p1_data" / "val_50").glob("*.png")) + sorted((data / "p1_data" / "train_50").glob("*.png"))
    for i, f in enumerate(src[:n]):
        Image.open(f).convert("RGB").save(out / f"{i:05d}.png")
    return out


def make_p2(data: Path, out: Path, n: int) -> Path:
    out.mkdir(parents=True)
    src = sorted((data / "p2_data" / "validation").glob("*_sat.jpg")) + sorted((data / "p2_data" / "train").glob("*_sat.jpg"))
    for i, f in enumerate(src[:n]):
        Image.open(f).convert("RGB").save(out / f"{i:04d}.jpg", quality=95)
    return out


def timed(cmd: list[str], cache: Path) -> float:
    env = dict(os.environ, VISLAB_CACHE=str(cache), PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}")
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - t0
    if proc.returncode:
        sys.exit(f"{' '.join(cmd)} failed:\n{proc.stderr[-2000:]}")
    return seconds


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", type=Path, default=DEFAULT_DATA)
    ap.add_argument("--p1-ckpt", type=Path)
    ap.add_argument("--p2-ckpt", type=Path)
    ap.add_argument("--p1-images", type=int, default=5000)
    ap.add_argument("--p2-images", type=int, default=313, help="0 leaves P2 out (the test suite's smoke run)")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        t = Path(tmp)
        p1 = make_p1(args.data, t / "p1", args.p1_images)
        c1 = args.p1_ckpt or recipe_checkpoint("cls-cpu", t / "cls-cpu.ckpt", num_classes=50)
        print(f"P1: {args.p1_images} images re-encoded from val_50/train_50, checkpoint {c1}")
        parts = [("hw1_1", "scripts/hw1_1.sh", p1, c1, "cls")]
        if args.p2_images:
            p2 = make_p2(args.data, t / "p2", args.p2_images)
            c2 = args.p2_ckpt or recipe_checkpoint("seg-cpu", t / "seg-cpu.ckpt", num_classes=7)
            print(f"P2: {args.p2_images} tiles re-encoded from validation/train, checkpoint {c2}")
            parts.append(("hw1_2", "scripts/hw1_2.sh", p2, c2, "seg"))
        else:
            print("P2: left out (--p2-images 0)")
        rows = []
        for name, script, images, ckpt, sub in parts:
            out = t / f"{name}.out"
            script_s = timed(["bash", script, str(images), str(out / "pred.csv" if sub == "cls" else out), str(ckpt)],
                             t / f"cache-{name}")
            ref = t / f"{name}.ref"
            torch_s = timed(["vislab", sub, "predict", str(ckpt), str(images),
                             str(ref / "pred.csv" if sub == "cls" else ref), "--engine", "torch"], t / f"cache-{name}-t")
            print(f"{name}: {script} {script_s:6.1f} s (default engine, cold); --engine torch {torch_s:6.1f} s")
            rows.append((name, script_s, torch_s))
    peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    print(f"peak RSS of the largest child process {peak:.0f} MB")
    for name, script_s, torch_s in rows:
        print(f"RATIO {name} finishes in {script_s:.0f} s: {LIMIT_S / script_s:.1f}x under the 600 s limit "
              f"({torch_s / script_s:.2f}x faster than --engine torch)")


if __name__ == "__main__":
    main()
