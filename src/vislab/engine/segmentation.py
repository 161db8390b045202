"""P2 engine: segmentation DataModule, LightningModule (pooled confusion matrix, the data set's
mIoU), and the callback that saves the predicted masks of chosen images at every epoch."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
import torchmetrics
from torch.utils.data import Dataset

from vislab.config import Recipe, held_out_seed
from vislab.data.tensors import channel_stats, normalize, spaced
from vislab.data.seg_classes import IGNORE, SegClasses, deepglobe
from vislab.data.segmentation import (CachedTiles, Pair, TileCache, augment_tiles, holdout_split, jitter_colours,
                                      list_pairs, pad_collate, scan_masks)
from vislab.engine.base import VislabModule
from vislab.engine.losses import build_loss, soft_target_loss
from vislab.engine.sampling import SplitData
from vislab.errors import VislabError
from vislab.io import atomic_write_bytes
from vislab.log import info
from vislab.metrics import confusion_matrix, pixel_accuracy


class PooledConfusion(torchmetrics.Metric):
    """A CxC confusion matrix summed over batches and processes (one bincount per update);
    pixels labelled :data:`IGNORE` (ignored or padding) are left out."""

    full_state_update = False

    def __init__(self, num_classes: int = 7) -> None:
        super().__init__()
        self.n = num_classes
        self.add_state("conf", default=torch.zeros(num_classes, num_classes, dtype=torch.long), dist_reduce_fx="sum")

    def update(self, pred: torch.Tensor, target: torch.Tensor) -> None:
        self.conf += confusion_matrix(target, pred, self.n, ignore_index=IGNORE)

    def compute(self) -> torch.Tensor:
        return self.conf


class SegmentationData(SplitData):
    """Pairs of ``train_dir`` split into training and held-out parts (seeded); masks read by
    ``classes`` (default: the course's colour code). Every pair is checked, then decoded once
    into a :class:`TileCache`; the loaders slice it."""

    collate = staticmethod(pad_collate)

    def __init__(self, train_dir: str | Path, recipe: Recipe, *, expected: tuple[int, int] | None = (512, 512),
                 classes: SegClasses | None = None) -> None:
        super().__init__(recipe)
        self.classes = classes or deepglobe()
        pairs = list_pairs(train_dir)
        self.stats = scan_masks(pairs, expected=expected, classes=self.classes)
        self.stats.check_labelled(train_dir, self.classes)
        for line in self.stats.reports(train_dir):
            info(line)
        tr, ho = holdout_split(len(pairs), fraction=recipe.holdout, seed=held_out_seed(recipe)) if recipe.holdout > 0 else (list(range(len(pairs))), [])
        self.pairs = pairs
        self.train_idx, self.holdout_idx = tr, ho
        self.train_pairs = [pairs[i] for i in tr]
        self.holdout_pairs = [pairs[i] for i in ho]
        self.expected = expected
        assert self.stats.sizes is not None
        self.tiles = TileCache(pairs, [tuple(v) for v in self.stats.sizes.tolist()], self.classes, expected=expected)

    @property
    def class_counts(self) -> torch.Tensor:
        """Pixel counts per class over the training part."""
        return self.stats.counts_of([p.stem for p in self.train_pairs])

    def dataset(self, indices: list[int]) -> Dataset:
        return CachedTiles(self.tiles, indices)

    def pixel_stats(self, most: int = 400) -> tuple[list[float], list[float]]:
        """Per-channel mean and std, in [0, 1] units, of the training tiles (at most ``most``
        evenly spaced ones): the normalisation of a network trained from scratch."""
        chosen = [self.train_idx[k] for k in spaced(len(self.train_idx), most)]
        return channel_stats(self.tiles.tile(i)[0][None] for i in chosen)


class SegmenterModule(VislabModule):
    """Loss and the data set's mIoU on the held-out split for a registry segmenter.

    ``data_meta["seg_classes"]``: the data set's description (:meth:`SegClasses.to_dict`; absent:
    the course's), kept in every checkpoint so inference decodes, scores and writes masks alike.
    """

    task = "seg"

    def __init__(self, recipe: dict[str, Any], num_classes: int, steps_per_epoch: int,
                 class_weights: list[float] | None = None, data_meta: dict[str, Any] | None = None,
                 pretrained: bool = True) -> None:
        super().__init__(recipe, num_classes, steps_per_epoch, data_meta=data_meta, pretrained=pretrained)
        self.save_hyperparameters()
        self.classes = SegClasses.from_dict(self.data_meta.get("seg_classes"))
        if self.classes.num_classes != num_classes:
            raise ValueError(f"{num_classes} classes, but the description has {self.classes.num_classes}")
        for net in (self.net, self.eval_net):
            net.scale = self.recipe.infer_scale
        w = None if class_weights is None else torch.tensor(class_weights)
        self.loss_fn = build_loss(self.recipe.loss, class_weights=w)
        self.holdout_conf = PooledConfusion(num_classes)

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        super().on_load_checkpoint(checkpoint)
        theirs = SegClasses.from_dict(checkpoint.get("vislab", {}).get("seg_classes"))
        if not theirs.same_classes(self.classes):
            raise VislabError(None, f"cannot resume: the training folder is described by {self.classes.source} "
                                    f"({', '.join(self.classes.names)}), the checkpoint by {theirs.source} "
                                    f"({', '.join(theirs.names)})")

    def on_after_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        x, y, idx, hw = batch
        soft = None
        if self.trainer is not None and self.trainer.training:
            r = self.recipe
            maps = None if self.teacher_targets is None else [self.teacher_targets[i].to(x.device) for i in idx.tolist()]
            x, y, *rest = augment_tiles(x, y, idx, hw, seed=r.seed, epoch=self.current_epoch, crop_size=r.crop_size,
                                        crop_area=r.crop_area, rot90=r.rot90, soft=maps)
            x = jitter_colours(x, idx, seed=r.seed, epoch=self.current_epoch)
            if rest:  # uint8-rounded probabilities, resampled: summing to 1 again
                soft = rest[0] / rest[0].sum(1, keepdim=True).clamp_min(1e-6)
        return self.prepare(x), y.long(), idx, soft

    def prepare(self, x: torch.Tensor) -> torch.Tensor:
        """uint8 (or float in [0, 255]) batch -> normalised float in the recipe's memory format."""
        return self.memory_format(normalize(x, self.mean, self.std))

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        x, y, _, soft = batch
        logits = self.net(x)
        loss = self.loss_fn(logits, y)
        if soft is not None:
            loss = (1 - self.recipe.distill) * loss + self.recipe.distill * soft_target_loss(logits, soft, y != IGNORE)
        self.log("train_loss", loss, on_step=True, on_epoch=True, prog_bar=True, sync_dist=True, batch_size=len(x))
        return loss

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        x, y = batch[0], batch[1]
        self.holdout_conf.update(self.held_out_logits(x).argmax(1), y)

    def on_validation_epoch_end(self) -> None:
        conf = self.holdout_conf.compute().cpu()  # summed over batches and processes
        self.log("holdout_miou", self.classes.miou(conf), sync_dist=False)
        self.log("holdout_pixacc", pixel_accuracy(conf), sync_dist=False)
        self.holdout_conf.reset()


class MaskSnapshots(pl.Callback):
    """Save the predicted masks of chosen images after every epoch's validation, in the data
    set's colours (what ``vislab seg progress`` and the report show).

    Layout: ``snapshots/<stem>_sat.<ext>`` (a copy of the image), ``<stem>_mask.png`` (the truth
    in colour) and ``snapshots/epoch_NNN/<stem>.png`` (predictions).
    """

    def __init__(self, pairs: list[Pair], out_dir: Path, classes: SegClasses | None = None) -> None:
        self.pairs = pairs
        self.dir = Path(out_dir) / "snapshots"
        self.classes = classes or deepglobe()

    def _write(self, ids: torch.Tensor, path: Path) -> None:
        atomic_write_bytes(self.classes.mask_png(ids.cpu(), colours=True), path)

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not trainer.is_global_zero:
            return
        self.dir.mkdir(parents=True, exist_ok=True)
        for p in self.pairs:
            shutil.copyfile(p.image, self.dir / f"{p.stem}_sat{p.image.suffix}")
            if p.mask is not None:
                if self.classes.course:
                    shutil.copyfile(p.mask, self.dir / f"{p.stem}_mask.png")
                else:
                    self._write(self.classes.read_mask(p.mask)[0], self.dir / f"{p.stem}_mask.png")

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not trainer.is_global_zero:
            return
        from vislab.data.images import read_rgb

        epoch_dir = self.dir / f"epoch_{trainer.current_epoch + 1:03d}"
        epoch_dir.mkdir(parents=True, exist_ok=True)
        was_training = pl_module.training
        pl_module.eval()
        with torch.no_grad():
            for p in self.pairs:
                x = normalize(read_rgb(p.image)[None].to(pl_module.device), pl_module.mean, pl_module.std)
                self._write(pl_module.eval_net(x).argmax(1)[0], epoch_dir / f"{p.stem}.png")
        pl_module.train(was_training)
