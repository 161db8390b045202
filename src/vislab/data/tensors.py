"""Helpers on image batches that both tasks use: per-sample random numbers for augmentation
that depend only on (seed, epoch, sample), and input normalisation."""

from __future__ import annotations

from typing import Iterable

import torch


def hash_uniform(seed: int, epoch: int, index: torch.Tensor, stream: int) -> torch.Tensor:
    """Uniform numbers in [0, 1), a pure function of (seed, epoch, sample index, stream).

    A 32-bit integer hash applied element-wise, so a resumed run re-draws exactly the same
    augmentation for the same sample in the same epoch, whatever the batch it lands in.
    """
    m = 0xFFFFFFFF
    x = index.to(torch.int64) & m
    for k in (seed, epoch, stream):
        x = (x * 0x9E3779B1 + (k & m) + 0x7F4A7C15) & m
        for _ in range(2):
            x = ((x >> 16) ^ x) * 0x45D9F3B & m
        x = (x >> 16) ^ x
    return x.to(torch.float64).div(2**32).float()


def normalize(x: torch.Tensor, mean: tuple[float, ...], std: tuple[float, ...]) -> torch.Tensor:
    """uint8 (or float in [0, 255]) (N, 3, H, W) -> float, scaled to [0, 1] and standardised per channel."""
    m = torch.tensor(mean, device=x.device).view(1, -1, 1, 1)
    s = torch.tensor(std, device=x.device).view(1, -1, 1, 1)
    return (x.float() / 255.0 - m) / s


def channel_stats(batches: Iterable[torch.Tensor]) -> tuple[list[float], list[float]]:
    """Per-channel mean and standard deviation, in [0, 1] units, of every pixel of ``batches``
    (uint8 (N, 3, H, W), any sizes), summed in float64 one batch at a time (a memory-mapped data
    set is never copied whole). The std is floored at 1e-3 (a constant channel)."""
    s = torch.zeros(3, dtype=torch.float64)
    s2 = torch.zeros(3, dtype=torch.float64)
    n = 0
    for batch in batches:
        x = batch.to(torch.float64) / 255.0
        s += x.sum(dim=(0, 2, 3))
        s2 += (x * x).sum(dim=(0, 2, 3))
        n += x.shape[0] * x.shape[2] * x.shape[3]
    if not n:
        raise ValueError("channel_stats: no pixels")
    mean = s / n
    std = (s2 / n - mean * mean).clamp_min(0).sqrt().clamp_min(1e-3)
    return mean.tolist(), std.tolist()


def spaced(n: int, most: int) -> list[int]:
    """At most ``most`` evenly spaced positions of ``range(n)``, first and last included.

        >>> spaced(10, 4), spaced(3, 5)
        ([0, 3, 6, 9], [0, 1, 2])
    """
    if n <= most:
        return list(range(n))
    return torch.linspace(0, n - 1, most).round().long().tolist()
