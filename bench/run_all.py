"""Run every benchmark on the real data and write docs/PERFORMANCE.md (machine and date included).

    python bench/run_all.py [--data DIR] [--quick [--jobs N]]

Each benchmark measures vislab and a straightforward reference in the same process and prints
RATIO lines; absolute times on shared machines are noisy, ratios much less so.
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
SAVED = HERE / ".out"
NO_DATA_OPTION = {"seg_predict_cpu.py", "bench_cls_cache.py", "bench_defaults.py", "bench_malloc.py"}  # they make their own inputs
MARKER = "<!-- everything below is written by bench/run_all.py -->"
BENCHES = {
    "bench_p1_input.py": [],
    "bench_p2_codec_miou.py": [],
    "bench_p2_loader.py": [],
    "seg_predict_cpu.py": [],
    "bench_predict.py": [],
    "bench_course_limits.py": [],
    "bench_train.py": ["--scaling"],
    "bench_cls_cache.py": [],
    "bench_defaults.py": [],
    "bench_malloc.py": [],
    "bench_train_gpu.py": [],  # only where a CUDA GPU is present (--quick runs it on the CPU)
}
QUICK = {"bench_p1_input.py": ["--limit", "512"], "bench_p2_codec_miou.py": ["--limit", "4", "--loop-pixels", "4096"],
         "bench_p2_loader.py": ["--images", "2", "--rss-tiles", "4"],
         "seg_predict_cpu.py": ["--images", "1", "--size", "128"],
         "bench_predict.py": ["--p1-images", "8", "--p2-images", "1", "--repeat", "1", "--variants", "eager fp32,onnxruntime"],
         # P1 only: its loop is P2's, and tests/ run scripts/hw1_2.sh cold (test_course_script_hw1_2)
         "bench_course_limits.py": ["--p1-images", "20", "--p2-images", "0"],
         "bench_train.py": ["--recipes", "cls-fast", "seg-fast", "--steps", "1", "--p2-pairs", "16"],
         "bench_malloc.py": ["--quick"],
         # bench_cls_cache.py and bench_defaults.py have their own --quick (1-5 minutes on 2 shared
         # cores, training included): too slow for the test suite's smoke run, so run_all --quick skips them
         # fp32 only: bf16 autocast on a CPU without bf16 units is emulated (45 of the script's 70 s here)
         "bench_train_gpu.py": ["--recipes", "cls-fast", "--steps", "1", "--variants", "fp32"]}


QUICK_LONGEST = ("bench_course_limits.py", "bench_train.py", "bench_p2_loader.py")


def has_cuda() -> bool:
    """Whether torch sees a CUDA device (asked in a child process: this script imports no torch)."""
    probe = [sys.executable, "-c", "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)"]
    return subprocess.run(probe, capture_output=True).returncode == 0


def _command(script: str, extra: list[str], data: Path | None) -> list[str]:
    cmd = [sys.executable, str(HERE / script), *extra]
    return cmd + ["--data", str(data)] if data and script not in NO_DATA_OPTION else cmd


def quick(args: argparse.Namespace) -> None:
    """Every script on tiny inputs, ``args.jobs`` at a time; outputs printed in the usual order."""
    from concurrent.futures import ThreadPoolExecutor

    env = dict(os.environ, **({"OMP_NUM_THREADS": "1"} if args.jobs > 1 else {}))

    def run(script: str) -> tuple[list[str], subprocess.CompletedProcess]:
        cmd = _command(script, QUICK[script], args.data)
        return cmd, subprocess.run(cmd, capture_output=True, text=True, env=env)

    with ThreadPoolExecutor(max(1, args.jobs)) as pool:
        # the longest first (measured one at a time: 30 s, 23 s, 16 s of about 140 s), so the jobs end together
        started = {s: pool.submit(run, s) for s in sorted(QUICK, key=lambda s: s not in QUICK_LONGEST)}
        for script in QUICK:
            cmd, proc = started[script].result()
            print("+", " ".join(cmd[1:]), flush=True)
            print(proc.stdout, proc.stderr[-2000:] if proc.returncode else "", flush=True)
            if proc.returncode:
                sys.exit(f"{script} failed")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", type=Path, default=None)
    ap.add_argument("--quick", action="store_true", help="tiny inputs: checks the scripts run, measures nothing")
    ap.add_argument("--resume", action="store_true",
                    help="reuse today's saved output of benchmarks that already finished (bench/.out/)")
    ap.add_argument("--out", type=Path, default=HERE.parent / "docs" / "PERFORMANCE.md")
    ap.add_argument("--jobs", type=int, default=1,
                    help="with --quick: scripts run this many at a time, one thread each (they measure nothing)")
    args = ap.parse_args()
    if args.jobs > 1 and not args.quick:
        sys.exit("--jobs runs benchmarks side by side, which spoils their measurements; it needs --quick")
    if args.quick:
        quick(args)
        return
    sections = []
    for script, extra in BENCHES.items():
        if script == "bench_train_gpu.py" and not has_cuda():
            print("- bench_train_gpu.py skipped: no CUDA GPU here", flush=True)
            continue
        cmd = _command(script, extra, args.data)
        saved = SAVED / f"{script}.txt"
        if args.resume and saved.is_file() and datetime.date.fromtimestamp(saved.stat().st_mtime) == datetime.date.today():
            stdout = saved.read_text()
            print("= reusing", saved)
        else:
            print("+", " ".join(cmd[1:]), flush=True)
            proc = subprocess.run(cmd, capture_output=True, text=True)
            print(proc.stdout, proc.stderr[-2000:] if proc.returncode else "", flush=True)
            if proc.returncode:
                sys.exit(f"{script} failed")
            stdout = proc.stdout
            SAVED.mkdir(exist_ok=True)
            saved.write_text(stdout)
        sections.append(f"## {script}\n\n```\n$ python bench/{' '.join([script, *cmd[2:]])}\n{stdout.strip()}\n```\n")
    header = (f"Written by `python bench/run_all.py` on {datetime.date.today()}; machine: "
              f"{platform.machine()}, {os.cpu_count()} CPUs, {platform.python_implementation()} "
              f"{platform.python_version()}, {platform.platform()}.\nThe machines are shared: compare the "
              "RATIO lines, which are measured side by side in one process.\n\n")
    summary = "| benchmark | result (RATIO line) |\n|---|---|\n" + "".join(
        f"| {ln.split()[1]} | {' '.join(ln.split()[2:])} |\n" for sec in sections for ln in sec.splitlines()
        if ln.startswith("RATIO"))
    # hand-written notes above the marker survive a re-run
    old = args.out.read_text() if args.out.is_file() else ""
    notes = old.split(MARKER)[0] if MARKER in old else "# Performance\n\n"
    args.out.write_text(f"{notes}{MARKER}\n\n{header}{summary}\n" + "\n".join(sections))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
