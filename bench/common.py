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


def recipe_checkpoint(recipe_name: str, path: Path, *, num_classes: int) -> Path:
    """A vislab checkpoint of a recipe's network at its initial weights (ImageNet where the
    recipe loads them): prediction time does not depend on the values, so timing runs need no
    training. Written in the format ``vislab ... train`` writes."""
    import torch

    from vislab.config import load_recipe
    from vislab.engine.classification import ClassifierModule
    from vislab.engine.segmentation import SegmenterModule

    recipe = load_recipe(recipe_name)
    cls = ClassifierModule if recipe.task == "cls" else SegmenterModule
    module = cls(recipe.to_dict(), num_classes, steps_per_epoch=1)
    ckpt: dict = {"state_dict": module.state_dict()}
    module.on_save_checkpoint(ckpt)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(ckpt, path)
    return path
