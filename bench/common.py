"""Shared helpers for the benchmarks: timing, peak memory, the data location."""

from __future__ import annotations

import resource
import time
from pathlib import Path
from typing import Callable

DEFAULT_DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "hw1_data"


def best_of(fn: Callable[[], object], repeat: int = 3) -> float:
    """Smallest wall time of ``repeat`` calls (the least disturbed by other load)."""
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def peak_rss_mb() -> float:
    """Peak resident memory of this process so far, in MB."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
