"""P2 engine: segmentation DataModule, LightningModule (pooled confusion matrix, course mIoU),
and the callback that saves the predicted masks of chosen images at every epoch."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
import torchmetrics
from torch.utils.data import DataLoader

from vislab.config import Recipe
from vislab.data.classification import normalize
from vislab.data.palette import NUM_CLASSES, classes_to_mask
from vislab.data.segmentation import Pair, SegmentationDataset, holdout_split, jitter_colours, list_pairs, scan_masks
from vislab.engine.base import VislabModule
from vislab.engine.losses import build_loss
from vislab.engine.sampling import EpochSampler, epoch_loader
from vislab.io import atomic_path
from vislab.log import info
from vislab.metrics import confusion_matrix, course_miou, pixel_accuracy


class PooledConfusion(torchmetrics.Metric):
    """A 7x7 confusion matrix summed over batches and processes (one bincount per update)."""

    full_state_update = False

    def __init__(self, num_classes: int = NUM_CLASSES) -> None:
        super().__init__()
        self.n = num_classes
        self.add_state("conf", default=torch.zeros(num_classes, num_classes, dtype=torch.long), dist_reduce_fx="sum")

    def update(self, pred: torch.Tensor, target: torch.Tensor) -> None:
        self.conf += confusion_matrix(target, pred, self.n)

    def compute(self) -> torch.Tensor:
        return self.conf


class SegmentationData(pl.LightningDataModule):
    """Pairs of ``train_dir`` split into training and held-out parts (seeded)."""

    def __init__(self, train_dir: str | Path, recipe: Recipe, *, expected: tuple[int, int] | None = (512, 512)) -> None:
        super().__init__()
        self.recipe = recipe
        pairs = list_pairs(train_dir)
        self.stats = scan_masks(pairs, expected=expected)
        report = self.stats.stray_report(train_dir)
        if report:
            info(report)
        tr, ho = holdout_split(len(pairs), fraction=recipe.holdout, seed=recipe.seed) if recipe.holdout > 0 else (list(range(len(pairs))), [])
        self.train_pairs = [pairs[i] for i in tr]
        self.holdout_pairs = [pairs[i] for i in ho]
        self.expected = expected

    @property
    def class_counts(self) -> torch.Tensor:
        """Pixel counts per class over the training part."""
        keep = {p.stem for p in self.train_pairs}
        rows = [i for i, s in enumerate(self.stats.stems) if s in keep]
        return self.stats.counts[rows].sum(0)

    def _loader(self, pairs: list[Pair], *, train: bool) -> DataLoader:
        r = self.recipe
        ds = SegmentationDataset(pairs, train=train, crop_size=r.crop_size if train else None, seed=r.seed,
                                 expected=self.expected, rot90=r.rot90, crop_area=r.crop_area)
        return epoch_loader(
            ds,
            EpochSampler(len(ds), shuffle=train, seed=r.seed, drop_last=train, with_epoch=train),
            train=train,
            datamodule=self,
            batch_size=r.batch_size,
            drop_last=train,
            num_workers=r.num_workers,
            persistent_workers=r.num_workers > 0,
            pin_memory=torch.cuda.is_available(),
            generator=torch.Generator().manual_seed(r.seed),
        )

    def train_dataloader(self) -> DataLoader:
        return self._loader(self.train_pairs, train=True)

    def val_dataloader(self) -> DataLoader | list:
        return self._loader(self.holdout_pairs, train=False) if self.holdout_pairs else []


class SegmenterModule(VislabModule):
    """Loss and the course mIoU on the held-out split for a registry segmenter."""

    task = "seg"

    def __init__(self, recipe: dict[str, Any], num_classes: int, steps_per_epoch: int,
                 class_weights: list[float] | None = None) -> None:
        super().__init__(recipe, num_classes, steps_per_epoch)
        self.save_hyperparameters()
        for net in (self.net, self.eval_net):
            net.scale = self.recipe.infer_scale
        w = None if class_weights is None else torch.tensor(class_weights)
        self.loss_fn = build_loss(self.recipe.loss, class_weights=w)
        self.holdout_conf = PooledConfusion(num_classes)

    def on_after_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        x, y, idx = batch
        if self.trainer is not None and self.trainer.training:
            x = jitter_colours(x, idx, seed=self.recipe.seed, epoch=self.current_epoch)
        return self.memory_format(normalize(x, self.mean, self.std)), y, idx

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        x, y, _ = batch
        loss = self.loss_fn(self.net(x), y)
        self.log("train_loss", loss, on_step=True, on_epoch=True, prog_bar=True, sync_dist=True)
        return loss

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        x, y, _ = batch
        self.holdout_conf.update(self.eval_net(x).argmax(1), y)

    def on_validation_epoch_end(self) -> None:
        conf = self.holdout_conf.compute().cpu()  # summed over batches and processes
        self.log("holdout_miou", course_miou(conf), sync_dist=False)
        self.log("holdout_pixacc", pixel_accuracy(conf), sync_dist=False)
        self.holdout_conf.reset()


class MaskSnapshots(pl.Callback):
    """Save the predicted colour masks of chosen images after every epoch's validation.

    Layout: ``snapshots/<stem>_sat.jpg``, ``<stem>_mask.png`` (copies of the inputs) and
    ``snapshots/epoch_NNN/<stem>.png`` (predictions), which ``vislab seg progress`` reads.
    """

    def __init__(self, pairs: list[Pair], out_dir: Path) -> None:
        self.pairs = pairs
        self.dir = Path(out_dir) / "snapshots"

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not trainer.is_global_zero:
            return
        self.dir.mkdir(parents=True, exist_ok=True)
        for p in self.pairs:
            shutil.copyfile(p.image, self.dir / f"{p.stem}_sat{p.image.suffix}")
            if p.mask is not None:
                shutil.copyfile(p.mask, self.dir / f"{p.stem}_mask.png")

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not trainer.is_global_zero:
            return
        from torchvision.io import encode_png

        from vislab.data.images import read_rgb

        epoch_dir = self.dir / f"epoch_{trainer.current_epoch + 1:03d}"
        epoch_dir.mkdir(parents=True, exist_ok=True)
        was_training = pl_module.training
        pl_module.eval()
        with torch.no_grad():
            for p in self.pairs:
                x = normalize(read_rgb(p.image)[None].to(pl_module.device), pl_module.mean, pl_module.std)
                ids = pl_module.eval_net(x).argmax(1)[0].cpu()
                with atomic_path(epoch_dir / f"{p.stem}.png") as tmp:
                    tmp.write_bytes(encode_png(classes_to_mask(ids)).numpy().tobytes())
        pl_module.train(was_training)
