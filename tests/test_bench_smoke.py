"""The benchmarks run on tiny inputs so they cannot rot (they measure nothing here)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from conftest import requires_real

ROOT = Path(__file__).resolve().parents[1]


@requires_real
def test_bench_scripts_run_quick_realdata():
    proc = subprocess.run([sys.executable, str(ROOT / "bench" / "run_all.py"), "--quick", "--jobs", "2"],
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    # one RATIO line per measurement, in the order of bench/run_all.py
    assert [ln.split()[1] for ln in proc.stdout.splitlines() if ln.startswith("RATIO")] == [
        "p1_input", "p2_decode", "p2_miou", "p2_loader", "seg_predict", "predict_cls-cpu", "predict_seg-cpu",
        "hw1_1", "hw1_2", "train_cls-fast", "train_seg-fast", "malloc_train_seg256_b8", "train_gpu_cls-fast"]
