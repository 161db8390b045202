"""P1 engine: the classification DataModule (decoded tensors, held-out split) and the
LightningModule (loss, augmentation on device, metrics, optimiser)."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
import torchmetrics
from torch.utils.data import Dataset

from vislab.config import Recipe, held_out_seed
from vislab.data.augment import random_erase, trivial_augment
from vislab.data.classification import (ImageFolderData, augment_batch, progressive_sides, resize_batch,
                                       stratified_split)
from vislab.data.tensors import normalize
from vislab.data.mixing import mix_batch
from vislab.engine.base import VislabModule
from vislab.engine.losses import soft_target_loss
from vislab.engine.sampling import SplitData


class IndexedTensors(Dataset):
    """(uint8 image, label, sample index) triples from decoded tensors; no decoding per epoch."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, indices: torch.Tensor) -> None:
        self.images, self.labels, self.indices = images, labels, indices

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        j = self.indices[i]
        return self.images[j], self.labels[j], j

    def __getitems__(self, items: list[int]) -> list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        j = self.indices[torch.as_tensor(items)]
        return [(self.images[j], self.labels[j], j)]


def _collate(batch: list) -> Any:
    # __getitems__ returns one pre-stacked triple: the batch is gathered by one index op
    return batch[0] if len(batch) == 1 and batch[0][0].dim() == 4 else torch.utils.data.default_collate(batch)


def holdout_split(labels: torch.Tensor, recipe: Recipe) -> tuple[torch.Tensor, torch.Tensor]:
    """(training, held-out) indices: the recipe's stratified held-out fraction, or none."""
    if recipe.holdout > 0:
        return stratified_split(labels, fraction=recipe.holdout, seed=held_out_seed(recipe))
    return torch.arange(len(labels)), torch.arange(0)


class ClassificationData(SplitData):
    """A decoded training folder split into training and held-out indices, served as index batches."""

    collate = staticmethod(_collate)

    def __init__(self, data: ImageFolderData, recipe: Recipe) -> None:
        super().__init__(recipe)
        assert data.labels is not None
        self.data = data
        self.num_classes = data.num_classes
        self.train_idx, self.holdout_idx = holdout_split(data.labels, recipe)

    def dataset(self, indices: torch.Tensor) -> Dataset:
        assert self.data.labels is not None
        return IndexedTensors(self.data.images, self.data.labels, indices)


class ClassifierModule(VislabModule):
    """Loss, on-device augmentation and accuracy for a registry classifier."""

    task = "cls"

    def __init__(self, recipe: dict[str, Any], num_classes: int, steps_per_epoch: int,
                 data_meta: dict[str, Any] | None = None, pretrained: bool = True) -> None:
        super().__init__(recipe, num_classes, steps_per_epoch, data_meta, pretrained)
        self.save_hyperparameters()
        self.train_acc = torchmetrics.classification.MulticlassAccuracy(num_classes, average="micro")
        self.holdout_acc = torchmetrics.classification.MulticlassAccuracy(num_classes, average="micro")

    def check_input(self, net: torch.nn.Module) -> None:
        """The smallest side it trains at (``resize_from`` or ``image_size``, else the stored
        images') must be one the network takes."""
        from vislab.models.input_side import check_side

        r = self.recipe
        stored = self.data_meta.get("stored_hw")
        if r.image_size is not None:
            side, setting = (r.resize_from, "resize_from") if r.resize_from is not None else (r.image_size, "image_size")
        elif stored:
            side, setting = min(stored), "the stored images' side"
        else:
            return
        check_side(net, int(side), model=r.model, setting=setting)

    def prepare(self, x: torch.Tensor, side: int | None = None) -> torch.Tensor:
        """uint8 batch -> normalised float at ``side`` (default: the model's input size)."""
        return self.memory_format(resize_batch(normalize(x, self.mean, self.std), side or self.recipe.image_size))

    def sides(self, epochs: int) -> list[int | None]:
        """The training side of each of ``epochs`` epochs: the recipe's ``image_size``, or with
        ``resize_from`` a progressive resize up to it (:func:`progressive_sides`)."""
        r = self.recipe
        if r.resize_from is None or r.image_size is None:
            return [r.image_size] * epochs
        return progressive_sides(r.resize_from, r.image_size, epochs)

    def epoch_weights(self, epochs: int) -> list[float]:
        """Relative cost of each epoch of a schedule of ``epochs``: its training pixels."""
        end = self.recipe.image_size
        return [1.0 if end is None else (side / end) ** 2 for side in self.sides(epochs)]  # type: ignore[operator]

    def train_side(self) -> int | None:
        """The side this epoch trains at (the schedule follows the epochs the run now plans)."""
        if self.recipe.resize_from is None:
            return self.recipe.image_size
        epochs = int(self.trainer.max_epochs or self.recipe.epochs)
        return self.sides(epochs)[min(self.current_epoch, epochs - 1)]

    def on_after_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        x, y, idx = batch
        if self.trainer is not None and self.trainer.training:
            r, epoch = self.recipe, self.current_epoch
            x = augment_batch(x, idx, seed=r.seed, epoch=epoch, pad=r.pad)
            if r.augment == "trivial":
                x = trivial_augment(x, idx, seed=r.seed, epoch=epoch)
            if r.erasing > 0:  # filled with the normalisation mean: zero at the network's input
                x = random_erase(x, idx, seed=r.seed, epoch=epoch, p=r.erasing, fill=tuple(255 * m for m in self.mean))
            return self.prepare(x, self.train_side()), y, idx
        return self.prepare(x), y, idx

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        x, y, idx = batch
        r = self.recipe
        mixed = mix_batch(x, y, mixup=r.mixup, cutmix=r.cutmix,
                          seed=(r.seed, self.global_step, self.global_rank))
        logits = self.net(self.memory_format(mixed.x))
        loss = mixed.loss(logits, label_smoothing=r.label_smoothing)
        if self.teacher_targets is not None:  # distillation (config refuses it together with mixing)
            soft = self.teacher_targets[idx.to(self.teacher_targets.device)].to(logits.device)
            loss = (1 - r.distill) * loss + r.distill * soft_target_loss(logits, soft)
        self.train_acc(logits.detach(), mixed.y_major)
        self.log("train_loss", loss, on_step=True, on_epoch=True, prog_bar=True, sync_dist=True)
        self.log("train_acc", self.train_acc, on_step=False, on_epoch=True)
        if r.resize_from is not None:
            self.log("train_side", float(x.shape[-1]), on_step=False, on_epoch=True)
        return loss

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        x, y, _ = batch
        logits = self.held_out_logits(x)
        loss = F.cross_entropy(logits, y, reduction="sum")
        self.holdout_acc(logits, y)
        self.log("holdout_loss", loss / len(y), on_epoch=True, sync_dist=True, batch_size=len(y))
        self.log("holdout_acc", self.holdout_acc, on_epoch=True, prog_bar=True)
