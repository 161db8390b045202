"""Helpers on image batches that both tasks use: per-sample random numbers for augmentation
that depend only on (seed, epoch, sample), and input normalisation."""

from __future__ import annotations

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
