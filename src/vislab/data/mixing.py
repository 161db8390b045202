"""Batch mixing for P1 training: mixup (blend two images) and cutmix (paste a box of one into
the other). Each returns the mixed batch, both label vectors and the weight of the first."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F


@dataclass(frozen=True)
class Mixed:
    """A mixed batch: targets are ``lam * y_a + (1 - lam) * y_b``."""

    x: torch.Tensor
    y_a: torch.Tensor
    y_b: torch.Tensor
    lam: float

    def loss(self, logits: torch.Tensor, *, label_smoothing: float = 0.0) -> torch.Tensor:
        """Cross-entropy against the mixed targets (exactly CE of the blended label vectors)."""
        ce_a = F.cross_entropy(logits, self.y_a, label_smoothing=label_smoothing)
        if self.lam == 1.0:
            return ce_a
        ce_b = F.cross_entropy(logits, self.y_b, label_smoothing=label_smoothing)
        return self.lam * ce_a + (1.0 - self.lam) * ce_b

    @property
    def y_major(self) -> torch.Tensor:
        """The label holding the larger share of each mixed image (for training accuracy)."""
        return self.y_a if self.lam >= 0.5 else self.y_b


def cutmix_box(h: int, w: int, lam: float, rng: np.random.Generator) -> tuple[int, int, int, int]:
    """A box (top, left, bottom, right) covering about ``1 - lam`` of an h x w image, centred
    uniformly at random and clipped to the image."""
    cut = (1.0 - lam) ** 0.5
    bh, bw = int(round(h * cut)), int(round(w * cut))
    cy, cx = int(rng.integers(h)), int(rng.integers(w))
    top, bottom = max(cy - bh // 2, 0), min(cy + bh - bh // 2, h)
    left, right = max(cx - bw // 2, 0), min(cx + bw - bw // 2, w)
    return top, left, bottom, right


def mix_batch(x: torch.Tensor, y: torch.Tensor, *, mixup: float, cutmix: float,
              seed: int | Sequence[int]) -> Mixed:
    """Mix a float batch with a shuffled copy of itself.

    Args:
        x: (N, C, H, W) float images; y: (N,) labels.
        mixup, cutmix: Beta(alpha, alpha) parameters; 0 turns a method off. With both on, each
            batch uses one of them with probability 1/2.
        seed: an int or a sequence of ints (e.g. seed, epoch, batch, rank); every draw (method,
            lambda, permutation, box) is a function of it, so a resumed run mixes alike.
    """
    if mixup <= 0 and cutmix <= 0:
        return Mixed(x, y, y, 1.0)
    rng = np.random.default_rng(seed)
    use_cutmix = cutmix > 0 and (mixup <= 0 or rng.random() < 0.5)
    alpha = cutmix if use_cutmix else mixup
    lam = float(rng.beta(alpha, alpha))
    perm = torch.from_numpy(rng.permutation(len(x))).to(x.device)
    if use_cutmix:
        h, w = x.shape[-2:]
        top, left, bottom, right = cutmix_box(h, w, lam, rng)
        x = x.clone()
        x[:, :, top:bottom, left:right] = x[perm, :, top:bottom, left:right]
        lam = 1.0 - (bottom - top) * (right - left) / (h * w)
    else:
        x = lam * x + (1.0 - lam) * x[perm]
    return Mixed(x, y, y[perm], lam)
