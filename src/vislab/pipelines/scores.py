"""How sure a score is, as both pipelines record it: the 95 % interval of an accuracy or an
mIoU, and the paired comparison of two runs on the same items (``--against``)."""

from __future__ import annotations

import math
from typing import Any, Callable

import torch

from vislab.errors import VislabError
from vislab.metrics import DRAWS, LEVEL, bootstrap_interval, wilson_interval


def interval(low: float, high: float, method: str) -> dict[str, Any]:
    """An interval as results record it."""
    return {"level": LEVEL, "low": round(low, 6), "high": round(high, 6), "method": method}


def accuracy_interval(correct: int, n: int) -> dict[str, Any]:
    """The Wilson interval of an accuracy over ``n`` images."""
    return interval(*wilson_interval(correct, n), f"Wilson score over {n} images")


def pooled_interval(per_file: torch.Tensor, metric: Callable[[torch.Tensor], torch.Tensor]) -> dict[str, Any] | None:
    """The percentile-bootstrap interval of a metric of counts pooled over files (such as the
    mIoU), the files resampled: the pixels of one image are not independent draws, the images
    are. None below two files."""
    n = per_file.shape[0]
    if n < 2:
        return None
    low, high = bootstrap_interval(per_file, metric)
    if not (math.isfinite(low) and math.isfinite(high)):  # the metric is undefined in every resample
        return None
    return interval(low, high, f"percentile bootstrap over {n} files, {DRAWS} resamples, seed 0")


def check_same_classes_early(ckpt: str, against: str, task: str,
                             same: Callable[[dict[str, Any], dict[str, Any]], bool]) -> None:
    """Before either run predicts: refuse an ``--against`` run whose first model is not a ``task``
    model, or predicts other classes than the first model of ``ckpt`` (``same`` compares two
    models' metadata)."""
    from vislab.export import model_meta
    from vislab.models.ensemble import members

    firsts = [members(spec)[0] for spec in (ckpt, against)]
    ours, theirs = (model_meta(first, "--against compares two trained models") for first in firsts)
    for first, meta in zip(firsts, (ours, theirs)):
        if meta.get("task") is None:
            raise VislabError(first, "not a vislab checkpoint (no vislab metadata: a plain state_dict?); --against "
                                     "compares two trained models")
    if ours.get("task") == task and theirs.get("task") != task:
        raise VislabError(against, f"--against: is a {theirs.get('task')} model ({theirs.get('model')}); "
                                   f"expected a {task} model")
    if ours.get("task") == theirs.get("task") == task:  # another task's model is refused where it loads
        check_comparable(against, same_classes=same(ours, theirs), same_items=True, items="")


def check_comparable(against: str, *, same_classes: bool, same_items: bool, items: str) -> None:
    """Refuse an ``--against`` run that predicts other classes, or scored other ``items`` (another
    held-out split), than the run it is compared with."""

    if not same_classes:
        raise VislabError(against, "--against: predicts other classes than the run it is compared with")
    if not same_items:
        raise VislabError(against, f"--against: scores other {items} than the run it is compared with (another "
                                   f"held-out split); compare them on {items} neither trained on")


def compared(against: str, name: str, ours: float, theirs: float, per_item_ours: torch.Tensor,
             per_item_theirs: torch.Tensor, metric: Callable[[torch.Tensor], torch.Tensor], items: str) -> dict[str, Any]:
    """The comparison with run ``against`` scored on the same items: its score, the difference
    (ours - theirs) and the paired-bootstrap interval of the difference (the items' counts of both
    resampled together, so what both get right or wrong cancels); no interval (None) for one item
    or a metric undefined in every resample."""
    spread = None
    if per_item_ours.shape[0] >= 2:
        low, high = bootstrap_interval(torch.stack([per_item_ours, per_item_theirs], 1),
                                       lambda c: metric(c[:, 0]) - metric(c[:, 1]))
        if math.isfinite(low) and math.isfinite(high):
            spread = interval(low, high, f"paired percentile bootstrap over {items}, {DRAWS} resamples, seed 0")
    return {"run": str(against), name: round(theirs, 6), "difference": round(ours - theirs, 6),
            "difference_interval": spread}
