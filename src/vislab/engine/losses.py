"""Segmentation losses by name: cross-entropy (optionally class-weighted), Dice, Lovasz, sums.

Every loss leaves out pixels labelled :data:`~vislab.data.seg_classes.IGNORE` (a data set's
ignore value, or padding between tiles of different sizes)."""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F

from vislab.data.seg_classes import IGNORE
from vislab.errors import VislabError

Loss = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


class _CrossEntropy:
    """Cross-entropy, class-weighted when ``weight`` is given (moved to the logits' device)."""

    def __init__(self, weight: torch.Tensor | None) -> None:
        self.weight = weight

    def __call__(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        w = None if self.weight is None else self.weight.to(logits.device)
        loss = F.cross_entropy(logits, target, weight=w, ignore_index=IGNORE)
        # a batch with every pixel left out: torch's mean over no pixel is 0/0 (NaN, with zero
        # gradients); nothing to learn from it is a loss of 0
        return torch.where(torch.isnan(loss) & (target == IGNORE).all(), torch.zeros_like(loss), loss)


class SummedLoss:
    """The sum of losses, each on float32 logits; an object, not a closure, so that a module
    holding it pickles (``ddp_spawn`` pickles the module to start its processes)."""

    def __init__(self, parts: list[Loss]) -> None:
        self.parts = parts

    def __call__(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return sum(fn(logits.float(), target) for fn in self.parts)  # type: ignore[return-value]


def _ce(weight: torch.Tensor | None) -> Loss:
    return _CrossEntropy(weight)


def _dice(weight: torch.Tensor | None) -> Loss:
    from segmentation_models_pytorch.losses import DiceLoss

    return DiceLoss(mode="multiclass", from_logits=True, ignore_index=IGNORE)


class _Lovasz:
    """smp's multiclass Lovasz loss; a batch with every pixel left out is a loss of 0 (smp gives
    an empty tensor there, which a sum with other losses and ``backward`` cannot take)."""

    def __init__(self) -> None:
        from segmentation_models_pytorch.losses import LovaszLoss

        self.fn = LovaszLoss(mode="multiclass", per_image=False, ignore_index=IGNORE)

    def __call__(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        loss = self.fn(logits, target)
        return loss.sum() if loss.dim() else loss  # the empty tensor's sum: 0, gradients 0


def _lovasz(weight: torch.Tensor | None) -> Loss:
    return _Lovasz()


LOSSES: dict[str, Callable[[torch.Tensor | None], Loss]] = {"ce": _ce, "dice": _dice, "lovasz": _lovasz}


def build_loss(spec: str, *, class_weights: torch.Tensor | None = None) -> Loss:
    """``"ce"``, ``"dice"``, ``"lovasz"`` or a sum such as ``"ce+dice"``."""
    parts = [p.strip() for p in spec.split("+") if p.strip()]
    unknown = [p for p in parts if p not in LOSSES]
    if unknown or not parts:
        raise VislabError(None, f"unknown loss {spec!r}; use {', '.join(LOSSES)} or a sum like ce+dice")
    return SummedLoss([LOSSES[p](class_weights) for p in parts])


def inverse_sqrt_frequency(counts: torch.Tensor, scored: int | None = None) -> torch.Tensor:
    """Class weights proportional to 1/sqrt(pixel share), mean 1 over the present classes among
    the first ``scored`` (those the mIoU averages; default all). A class the metric leaves out (the
    course's unknown) weighs 1: rare as it is, up-weighting it would buy predictions the metric
    only counts against the scored classes."""
    n = counts.numel() if scored is None else scored
    share = counts[:n].double() / counts[:n].sum()
    w = torch.where(share > 0, share.clamp_min(1e-6).rsqrt(), torch.zeros_like(share))
    return torch.cat([w / w[share > 0].mean(), torch.ones(counts.numel() - n, dtype=w.dtype)]).float()


def soft_target_loss(logits: torch.Tensor, target_probs: torch.Tensor, keep: torch.Tensor | None = None) -> torch.Tensor:
    """Cross-entropy against a distribution per sample (a teacher's probabilities): the mean over
    the batch (and, for (N, C, H, W) logits, over the pixels) of ``-sum_c p_c log softmax(logits)_c``
    (the KL divergence up to the teacher's entropy, which does not depend on the student).
    ``keep``: a boolean mask of the samples or pixels that count (e.g. not padding); none kept: 0."""
    per = -(target_probs.float() * F.log_softmax(logits.float(), dim=1)).sum(1)
    if keep is None:
        return per.mean()
    return (per * keep).sum() / keep.sum().clamp_min(1)

