"""Samplers whose order is a pure function of (seed, epoch), sharded across processes.

Lightning calls ``set_epoch`` before every epoch; rank ``r`` of ``w`` takes items ``r::w`` of
the epoch's order. Evaluation shards are never padded with duplicates (a padded shard shifts
the metric), so per-process counts simply add up.
"""

from __future__ import annotations

from typing import Iterator

import torch
import torch.distributed as dist
from torch.utils.data import Sampler


def _rank_world() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


class EpochSampler(Sampler[int]):
    """Yield positions ``0..n-1`` (shuffled from ``(seed, epoch)`` when ``shuffle``), this rank's share.

    Example:
        >>> s = EpochSampler(10, shuffle=True, seed=0); s.set_epoch(3); list(s) == list(s)
        True
    """

    def __init__(self, n: int, *, shuffle: bool, seed: int, drop_last: bool = False,
                 with_epoch: bool = False) -> None:
        self.n = n
        self.with_epoch = with_epoch  # yield (index, epoch) so datasets can seed augmentation
        self.shuffle = shuffle
        self.seed = seed
        self.epoch = 0
        self.drop_last = drop_last

    def set_epoch(self, epoch: int) -> None:
        """Called by Lightning before each epoch."""
        self.epoch = epoch

    def order(self) -> torch.Tensor:
        """The full epoch order (all ranks)."""
        if not self.shuffle:
            return torch.arange(self.n)
        g = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
        return torch.randperm(self.n, generator=g)

    def __iter__(self) -> Iterator:
        rank, world = _rank_world()
        order = self.order()
        if self.drop_last and world > 1:
            order = order[: (self.n // world) * world]
        mine = order[rank::world].tolist()
        return iter([(i, self.epoch) for i in mine] if self.with_epoch else mine)

    def __len__(self) -> int:
        rank, world = _rank_world()
        n = (self.n // world) * world if (self.drop_last and world > 1) else self.n
        return len(range(rank, n, world))
