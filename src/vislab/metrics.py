"""Metrics from one confusion matrix: accumulate counts, reduce, only then take ratios.

The course mIoU (``course_miou``): over the whole set (pixels of all images pooled), for each
class c in 0..5, IoU_c = TP / (TP + FP + FN), where FP counts every pixel predicted c whose
label is not c, INCLUDING pixels labelled unknown (6); mIoU is the mean over the six classes.
Class 6 is never averaged.

vislab's rule for a class absent from both prediction and truth (0/0): its IoU is NaN and it
is left out of the mean (the course script would return NaN for the whole mean). On real
validation sets every class is present, so this only matters for small subsets.
"""

from __future__ import annotations

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
    """IoU of classes ``0..classes-1`` with the course's FP (all other labels, unknown included)."""
    conf = conf.double()
    tp = conf.diagonal()[:classes]
    pred_c = conf.sum(0)[:classes]  # TP + FP: every pixel predicted c
    true_c = conf.sum(1)[:classes]  # TP + FN: every pixel labelled c
    union = pred_c + true_c - tp
    return torch.where(union > 0, tp / union.clamp_min(1), torch.full_like(tp, float("nan")))


def course_miou(conf: torch.Tensor) -> float:
    """The course mIoU from a pooled 7x7 confusion matrix (mean of classes 0..5, NaN classes skipped)."""
    return float(torch.nanmean(iou_per_class(conf)))


def pixel_accuracy(conf: torch.Tensor) -> float:
    """Fraction of pixels predicted correctly."""
    return float(conf.diagonal().sum() / conf.sum().clamp_min(1))
