"""Samplers whose order is a pure function of (seed, epoch), sharded across processes.

Lightning calls ``set_epoch`` before every epoch; rank ``r`` of ``w`` takes items ``r::w`` of
the epoch's order. Evaluation shards are never padded with duplicates (a padded shard shifts
the metric), so per-process counts simply add up.
"""

from __future__ import annotations

from typing import Any, Callable, Iterator

import torch
import torch.distributed as dist
from torch.utils.data import DataLoader, Sampler


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
        self._skip: tuple[int, int] | None = None  # (epoch, items of this rank already trained on)

    def set_epoch(self, epoch: int) -> None:
        """Called by Lightning before each epoch."""
        self.epoch = epoch

    def resume(self, epoch: int, items: int) -> None:
        """Start at ``epoch`` and leave out this rank's first ``items`` positions of it, once."""
        self.epoch = epoch
        self._skip = (epoch, items)

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
        if self._skip is not None and self._skip[0] == self.epoch:
            mine = mine[self._skip[1]:]
            self._skip = None
        return iter([(i, self.epoch) for i in mine] if self.with_epoch else mine)

    def __len__(self) -> int:
        rank, world = _rank_world()
        n = (self.n // world) * world if (self.drop_last and world > 1) else self.n
        return len(range(rank, n, world))


class ResumableLoader(DataLoader):
    """A DataLoader over an :class:`EpochSampler` whose position Lightning saves in every
    checkpoint (``state_dict``) and restores on resume (``load_state_dict``), so a run resumed
    from a mid-epoch checkpoint goes on with the first batch the model has not trained on.

    ``progress`` returns the batches of the current epoch the model has processed (not the
    sampler's position, which runs ahead by the prefetched batches).
    """

    def __init__(self, *args: Any, progress: Callable[[], int] | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.progress = progress

    def state_dict(self) -> dict[str, int]:
        sampler = self.sampler
        assert isinstance(sampler, EpochSampler)
        return {"epoch": sampler.epoch, "batches": int(self.progress()) if self.progress else 0}

    def load_state_dict(self, state: dict[str, int]) -> None:
        sampler = self.sampler
        assert isinstance(sampler, EpochSampler) and self.batch_size is not None
        epoch, done = int(state["epoch"]), int(state["batches"])
        if done >= len(self):  # saved after the epoch's last batch: the next epoch starts afresh
            sampler.resume(epoch + 1, 0)
        else:
            sampler.resume(epoch, done * self.batch_size)


def processed_batches(datamodule: Any) -> Callable[[], int]:
    """``progress`` for a :class:`ResumableLoader` of a LightningDataModule attached to a Trainer."""

    def count() -> int:
        trainer = getattr(datamodule, "trainer", None)
        return trainer.fit_loop.epoch_loop.batch_progress.current.processed if trainer is not None else 0

    return count
