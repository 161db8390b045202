"""Metrics from one confusion matrix: accumulate counts, reduce, only then take ratios.

The course mIoU (``course_miou``): over the whole set (pixels of all images pooled), for each
class c in 0..5, IoU_c = TP / (TP + FP + FN), where FP counts every pixel predicted c whose
label is not c, INCLUDING pixels labelled unknown (6); mIoU is the mean over the six classes.
Class 6 is never averaged.

vislab's rule for a class absent from both prediction and truth (0/0): its IoU is NaN and it
is left out of the mean (the course script would return NaN for the whole mean). On real
validation sets every class is present, so this only matters for small subsets.

How far a score could move on another draw of the same kind of images: ``wilson_interval`` for an
accuracy (a proportion of independent images), ``bootstrap_interval`` for a metric of pooled
counts such as the mIoU (the files resampled, their counts pooled again, the metric taken again).
"""

from __future__ import annotations

import math
from statistics import NormalDist
from typing import Callable

import torch

COURSE_CLASSES = 6


def confusion_matrix(target: torch.Tensor, pred: torch.Tensor, num_classes: int,
                     ignore_index: int | None = None) -> torch.Tensor:
    """Counts ``conf[t, p]`` of pixels with label t predicted p (one vectorised bincount).

    Pixels labelled ``ignore_index`` are left out; any other label outside ``0..num_classes-1``
    is an error, not silently dropped.
    """
    t = target.reshape(-1).long()
    p = pred.reshape(-1).long()
    if ignore_index is not None:
        keep = t != ignore_index
        if not bool(keep.all()):
            t, p = t[keep], p[keep]
    if t.numel() and (int(t.min()) < 0 or int(t.max()) >= num_classes):
        raise ValueError(f"label values must lie in 0..{num_classes - 1}; found {int(t.min())}..{int(t.max())}")
    return torch.bincount(t * num_classes + p, minlength=num_classes**2).reshape(num_classes, num_classes)


def iou_per_class(conf: torch.Tensor, classes: int = COURSE_CLASSES) -> torch.Tensor:
    """IoU of classes ``0..classes-1`` with the course's FP (all other labels, unknown included);
    ``conf`` (K, K), or a batch (..., K, K) of them."""
    conf = conf.double()
    tp = conf.diagonal(dim1=-2, dim2=-1)[..., :classes]
    pred_c = conf.sum(-2)[..., :classes]  # TP + FP: every pixel predicted c
    true_c = conf.sum(-1)[..., :classes]  # TP + FN: every pixel labelled c
    union = pred_c + true_c - tp
    return torch.where(union > 0, tp / union.clamp_min(1), torch.full_like(tp, float("nan")))


def course_miou(conf: torch.Tensor) -> float:
    """The course mIoU from a pooled 7x7 confusion matrix (mean of classes 0..5, NaN classes skipped)."""
    return float(torch.nanmean(iou_per_class(conf)))


def pixel_accuracy(conf: torch.Tensor) -> float:
    """Fraction of pixels predicted correctly."""
    return float(conf.diagonal().sum() / conf.sum().clamp_min(1))


LEVEL = 0.95
"""The coverage of the intervals vislab prints."""


def wilson_interval(successes: int, n: int, level: float = LEVEL) -> tuple[float, float]:
    """The Wilson score interval of the proportion ``successes / n`` (it stays inside [0, 1] and
    keeps its coverage near 0 and 1, unlike the normal approximation)."""
    if n <= 0 or not 0 <= successes <= n:
        raise ValueError(f"need 0 <= successes <= n and n > 0, got {successes} of {n}")
    z = NormalDist().inv_cdf(0.5 + level / 2)
    p, z2 = successes / n, z * z
    centre = (p + z2 / (2 * n)) / (1 + z2 / n)
    half = z * math.sqrt(p * (1 - p) / n + z2 / (4 * n * n)) / (1 + z2 / n)
    return max(0.0, centre - half), min(1.0, centre + half)


DRAWS = 2000
"""Resamples of a bootstrap interval."""


def bootstrap_interval(per_file: torch.Tensor, metric: Callable[[torch.Tensor], torch.Tensor], *,
                       draws: int = DRAWS, level: float = LEVEL, seed: int = 0,
                       cells: int = 4_000_000) -> tuple[float, float]:
    """The percentile bootstrap interval of a metric of counts pooled over files: ``per_file``
    (F, ...) holds each file's counts (a confusion matrix); each resample draws F files with
    replacement and pools their counts, and ``metric`` maps a batch (D, ...) of pooled counts to
    D values (NaN ones are dropped). Seeded: the same files give the same interval. Resamples
    are drawn in chunks of at most 250 and of at most ``cells`` (resample, file) weights (about
    24 bytes each), so a large folder needs no more memory than its counts and 100 MB."""
    n = per_file.shape[0]
    if n < 2:
        raise ValueError(f"a bootstrap interval needs at least 2 files, got {n}")
    gen = torch.Generator().manual_seed(seed)
    flat = per_file.reshape(n, -1).double()
    values = []
    chunk = max(1, min(250, cells // n))
    for start in range(0, draws, chunk):  # the draws continue one stream: the chunk size changes no value
        d = min(chunk, draws - start)
        picks = torch.randint(n, (d, n), generator=gen)
        weights = torch.zeros(d, n, dtype=torch.float64).scatter_add_(1, picks, torch.ones(d, n, dtype=torch.float64))
        values.append(metric((weights @ flat).reshape(d, *per_file.shape[1:])))
    v = torch.cat(values).double()
    v = v[~torch.isnan(v)]
    if not len(v):
        return math.nan, math.nan
    lo, hi = torch.quantile(v, torch.tensor([(1 - level) / 2, (1 + level) / 2], dtype=torch.float64)).tolist()
    return lo, hi
