"""Samplers whose order is a pure function of (seed, epoch), sharded across processes.

Lightning calls ``set_epoch`` before every epoch; rank ``r`` of ``w`` takes items ``r::w`` of
the epoch's order. Evaluation shards are never padded with duplicates (a padded shard shifts
the metric), so per-process counts simply add up.
"""

from __future__ import annotations

from typing import Any, Callable, Iterator

import lightning.pytorch as pl
import torch
import torch.distributed as dist
from torch.utils.data import DataLoader, Dataset, Sampler


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

    def __init__(self, n: int, *, shuffle: bool, seed: int, drop_last: bool = False) -> None:
        self.n = n
        self.shuffle = shuffle
        self.seed = seed
        self.epoch = 0
        self.drop_last = drop_last
        self._skip: tuple[int, int] | None = None  # (epoch, items of its order already trained on)

    def set_epoch(self, epoch: int) -> None:
        """Called by Lightning before each epoch."""
        self.epoch = epoch

    def resume(self, epoch: int, items: int) -> None:
        """Start at ``epoch`` and leave out the first ``items`` positions of its order (all ranks
        together, so a resume with another number of processes skips the same samples), once."""
        self.epoch = epoch
        self._skip = (epoch, items)

    def order(self) -> torch.Tensor:
        """The full epoch order (all ranks)."""
        if not self.shuffle:
            return torch.arange(self.n)
        g = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
        return torch.randperm(self.n, generator=g)

    def positions(self, world: int) -> int:
        """The positions of an epoch's order that ``world`` processes train on together (what a
        loader state's ``items`` counts towards)."""
        return (self.n // world) * world if (self.drop_last and world > 1) else self.n

    def __iter__(self) -> Iterator:
        rank, world = _rank_world()
        order = self.order()[: self.positions(world)]
        mine = order[rank::world].tolist()
        if self._skip is not None and self._skip[0] == self.epoch:
            done = self._skip[1]  # positions rank, rank + world, ... below ``done`` were trained on
            mine = mine[max(0, -(-(done - rank) // world)):]
            self._skip = None
        return iter(mine)

    def __len__(self) -> int:
        rank, world = _rank_world()
        return len(range(rank, self.positions(world), world))


class ResumableLoader(DataLoader):
    """A DataLoader over an :class:`EpochSampler` whose position Lightning saves in every
    checkpoint (``state_dict``) and restores on resume (``load_state_dict``), so a run resumed
    from a mid-epoch checkpoint goes on with the first batch the model has not trained on.

    ``position`` reports the fit loop's progress; the loader counts the batches the model has
    processed, not the sampler's position, which runs ahead by the prefetched batches.
    """

    def __init__(self, *args: Any, position: LoopPosition, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.position = position
        # the epoch to run next: with worker processes the sampler is read as soon as the
        # iterator exists, before Lightning's set_epoch (a resumed run would replay epoch 0)
        self._epoch_sampler().set_epoch(position.epoch())

    def _epoch_sampler(self) -> EpochSampler:
        sampler = self.sampler
        assert isinstance(sampler, EpochSampler)
        return sampler

    def state_dict(self) -> dict[str, int]:
        sampler = self._epoch_sampler()
        done, total = self.position.batches()
        _, world = _rank_world()
        if done >= total:  # saved after the epoch's last batch (of limit_train_batches, if set)
            return {"epoch": sampler.epoch + 1, "items": 0}
        return {"epoch": sampler.epoch, "items": done * int(self.batch_size or 1) * world}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self._epoch_sampler().resume(int(state["epoch"]), int(state["items"]))


def epoch_items(loader: Any, batches: int, world: int) -> int:
    """The training items one epoch of ``batches`` batches per process of ``loader`` covers over
    ``world`` processes: the epoch order's positions when fewer (a last batch that is not full),
    as :meth:`ResumableLoader.state_dict` counts them."""
    full = batches * int(getattr(loader, "batch_size", None) or 1) * world
    sampler = getattr(loader, "sampler", None)
    return min(full, sampler.positions(world)) if isinstance(sampler, EpochSampler) else full


class LoopPosition:
    """Where the fit loop of the Trainer a LightningDataModule is attached to stands."""

    def __init__(self, datamodule: Any) -> None:
        self.datamodule = datamodule

    def _trainer(self) -> Any:
        return getattr(self.datamodule, "trainer", None)

    def epoch(self) -> int:
        """The epoch the loop runs next (or is in the middle of)."""
        trainer = self._trainer()
        return trainer.fit_loop.epoch_progress.current.processed if trainer is not None else 0

    def batches(self) -> tuple[int, int]:
        """(batches of the current epoch the model has processed, batches the epoch has)."""
        trainer = self._trainer()
        if trainer is None:
            return 0, 1
        done = trainer.fit_loop.epoch_loop.batch_progress.current.processed
        return done, int(trainer.num_training_batches)


class SplitData(pl.LightningDataModule):
    """A decoded data set split into training and held-out indices (``train_idx``,
    ``holdout_idx``, set by the subclass), served by one kind of loader for both tasks: training
    resumable mid-epoch in a seeded order, evaluation in order and never padded.

    Subclasses give :meth:`dataset` and may set ``collate``.
    """

    collate: Callable[[list], Any] | None = None

    def __init__(self, recipe: Any) -> None:
        super().__init__()
        self.recipe = recipe
        self.train_idx: Any = []
        self.holdout_idx: Any = []

    def dataset(self, indices: Any) -> Dataset:
        """The items at ``indices``."""
        raise NotImplementedError

    def _loader(self, indices: Any, *, train: bool) -> DataLoader:
        r = self.recipe
        ds = self.dataset(indices)
        sampler = EpochSampler(len(ds), shuffle=train, seed=r.seed, drop_last=train)
        kwargs: dict[str, Any] = dict(
            batch_size=r.batch_size, drop_last=train, num_workers=r.num_workers, persistent_workers=r.num_workers > 0,
            pin_memory=torch.cuda.is_available(), generator=torch.Generator().manual_seed(r.seed),
            collate_fn=type(self).collate)
        if train:
            return ResumableLoader(ds, sampler=sampler, position=LoopPosition(self), **kwargs)
        return DataLoader(ds, sampler=sampler, **kwargs)

    def train_dataloader(self) -> DataLoader:
        return self._loader(self.train_idx, train=True)

    def val_dataloader(self) -> DataLoader | list:
        return self._loader(self.holdout_idx, train=False) if len(self.holdout_idx) else []
