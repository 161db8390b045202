"""What every vislab LightningModule shares: the registry network, normalisation constants,
the optimiser, and full-state checkpoints (metadata for inference, RNG states for resume)."""

from __future__ import annotations

from typing import Any

import lightning.pytorch as pl
import torch

from vislab.config import recipe_from_dict
from vislab.engine.ema import WeightEMA
from vislab.engine.optim import ScheduleWarp, build_optimization, rescale_schedule
from vislab.engine.sampling import epoch_items
from vislab.engine.state import capture_rng, restore_rng
from vislab.errors import VislabError
from vislab.models import IMAGENET_MEAN, IMAGENET_STD, build_model
from vislab.models.checkpoints import FORMAT, loader_position
from vislab.models.freeze import freeze_prefixes


def decay_groups(net: torch.nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """The trainable parameters in two optimiser groups (timm's rule): weight decay on weights of
    two or more dimensions (convolutions, linear layers), none on biases and normalisation
    scales and shifts, whose decay only fights the normalisation. Frozen parameters are left out."""
    from timm.optim import param_groups_weight_decay

    return [g for g in param_groups_weight_decay(net, weight_decay) if g["params"]]


class VislabModule(pl.LightningModule):
    """Base LightningModule; subclasses set ``task`` and write the steps."""

    task = ""

    def __init__(self, recipe: dict[str, Any], num_classes: int, steps_per_epoch: int,
                 data_meta: dict[str, Any] | None = None, pretrained: bool = True) -> None:
        """``pretrained=False`` leaves the recipe's ``weights`` unread: a resumed run's checkpoint
        replaces every weight (its file may have moved), and a timing probe needs none."""
        super().__init__()
        self.recipe = recipe_from_dict(recipe)
        self.num_classes = num_classes
        # what inference needs to know about the training data (class names, decode size);
        # written into every checkpoint's metadata
        self.data_meta = dict(data_meta or {})
        self.steps_per_epoch = steps_per_epoch
        self.net = build_model(self.recipe.model, num_classes=num_classes, weights=self.recipe.weights if pretrained else None)
        freeze_prefixes(self.net, self.recipe.freeze, model=self.recipe.model)
        self.check_input(self.net)
        if self.recipe.channels_last:
            self.net = self.net.to(memory_format=torch.channels_last)
        self.ema = WeightEMA(self.net, self.recipe.ema) if self.recipe.ema > 0 else None
        if self.recipe.compile:
            self.net.compile()  # in place: parameter names (and checkpoints) stay those of the eager net
        self.mean = tuple(self.recipe.mean or IMAGENET_MEAN)
        self.std = tuple(self.recipe.std or IMAGENET_STD)
        self._rng_to_restore: dict[str, Any] | None = None
        # a time budget may end the schedule earlier during the run (callbacks.BudgetKeeper); the
        # re-plan travels in checkpoints, so a resumed run keeps it
        self.schedule_warp = ScheduleWarp(max(1, steps_per_epoch * self.recipe.epochs))
        self.replanned_epochs: int | None = None
        self.stop_step: int | None = None  # a budget that ends the last epoch early stops at this step
        self.resumed_at_step: int | None = None
        self.resumed_position: tuple[int, int] | None = None  # (epoch to run, 0-based; its items trained)
        # distillation: the teachers' targets per training item, in the training loader's item
        # order (a classifier's (N, C) probabilities; a segmenter's uint8 maps over each tile), or
        # a function of the training device that makes them (before_training calls it); set by
        # the pipeline, not saved in checkpoints (a resumed run makes them again)
        self.teacher_targets: Any = None

    def check_input(self, net: torch.nn.Module) -> None:
        """Refuse, while the module is built (before a run folder is written), inputs the freshly
        built ``net`` cannot take; every input goes, by default."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    @property
    def eval_net(self) -> torch.nn.Module:
        """The network that is evaluated and used for inference: the weight average when the
        recipe keeps one (``ema``), else the trained network."""
        return self.ema.module if self.ema is not None else self.net

    def held_out_logits(self, x: torch.Tensor) -> torch.Tensor:
        """The evaluated network's output on a held-out batch, outside the autocast of a
        ``*-mixed`` precision: these scores pick the checkpoint and are reported beside those of
        ``eval``/``score``, which run in fp32 (bf16 autocast moved a CPU run's held-out accuracy by
        1.6 points, docs/RESULTS.md). A ``*-true`` precision's half-precision weights stay so."""
        with torch.autocast(x.device.type, enabled=False):
            return self.eval_net(x)

    def optimizer_step(self, *args: Any, **kwargs: Any) -> None:
        # the average moves right after each step, before any checkpoint of that step is written
        super().optimizer_step(*args, **kwargs)
        if self.ema is not None:
            self.ema.update(self.net)

    def memory_format(self, x: torch.Tensor) -> torch.Tensor:
        """NHWC when the recipe asks for channels_last, in the network's float type (a 64-true,
        16-true or bf16-true run casts the network itself, and float32 inputs failed there)."""
        if x.is_floating_point() and x.dtype != self.dtype:
            x = x.to(self.dtype)
        return x.contiguous(memory_format=torch.channels_last) if self.recipe.channels_last else x

    def configure_optimizers(self) -> dict:
        return build_optimization(decay_groups(self.net, self.recipe.weight_decay), self.recipe,
                                  steps_per_epoch=self.steps_per_epoch, warp=self.schedule_warp)

    def epoch_weights(self, epochs: int) -> list[float]:
        """Relative cost of each epoch of a schedule of ``epochs`` (all equal here; a module whose
        epochs differ, such as a progressive resize, says how)."""
        return [1.0] * epochs

    @property
    def schedule_step(self) -> int:
        """The learning-rate scheduler's own step count, in this process's steps (after a resume on
        another process count ``trainer.global_step`` still counts the old processes' steps)."""
        return int(self.lr_schedulers().last_epoch)

    def replan(self, epochs: int, end_step: int | None = None) -> None:
        """End the run after ``epochs`` epochs (fewer or more than planned): from the current step,
        the rest of the learning-rate schedule is compressed or stretched into the epochs left.
        ``end_step``: the last of them ends at that step (:attr:`schedule_step`'s count), before its
        last batch, and training stops there."""
        end = self.steps_per_epoch * epochs if end_step is None else end_step
        self.schedule_warp.replan(self.schedule_step, end)
        self.replanned_epochs = epochs
        self.stop_step = end_step
        self.trainer.fit_loop.max_epochs = epochs

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["vislab"] = {
            "format": FORMAT, "task": self.task, "model": self.recipe.model, "num_classes": self.num_classes,
            "image_size": self.recipe.image_size if self.task == "cls" else None,
            "mean": list(self.mean), "std": list(self.std), "recipe": self.recipe.to_dict(),
            "steps_per_epoch": self.steps_per_epoch,  # per process: the schedule's unit (rescale_schedule)
            **self.data_meta,
        }
        if self.replanned_epochs is not None:
            checkpoint["vislab"]["replanned"] = {"epochs": self.replanned_epochs, "total": self.schedule_warp.total,
                                                 "knots": [list(k) for k in self.schedule_warp.knots],
                                                 "stop": self.stop_step}
        checkpoint["rng"] = capture_rng()

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        meta = checkpoint.get("vislab", {})
        mine = (self.task, self.recipe.model, self.num_classes)
        theirs = (meta.get("task"), meta.get("model"), meta.get("num_classes"))
        if mine != theirs:
            raise VislabError(None, f"cannot resume: the checkpoint is {theirs[0]} {theirs[1]} with {theirs[2]} "
                                    f"classes, this run is {mine[0]} {mine[1]} with {mine[2]}")
        names = self.data_meta.get("class_names")
        if meta.get("class_names") != names:
            raise VislabError(None, "cannot resume: the training folder's classes are not the checkpoint's "
                                    f"({meta.get('class_names')} vs {names})")
        self._rng_to_restore = checkpoint.get("rng")
        self.resumed_at_step = checkpoint.get("global_step")  # a resume that trains nothing ends here
        self.resumed_position = loader_position(checkpoint)
        saved_groups = [len(o.get("param_groups", [])) for o in checkpoint.get("optimizer_states", [])]
        groups = len(decay_groups(self.net, self.recipe.weight_decay))
        if saved_groups and saved_groups[0] != groups:
            raise VislabError(None, f"cannot resume: the checkpoint's optimiser has {saved_groups[0]} parameter "
                                    f"group(s), this vislab builds {groups} (it leaves biases and normalisation layers out of "
                                    "weight decay, the vislab that started the run did not); finish it with that version")
        saved = int(meta.get("steps_per_epoch") or self.steps_per_epoch)
        changed = False
        for sched in checkpoint.get("lr_schedulers", []):
            changed |= rescale_schedule(sched, saved, self.steps_per_epoch)
        replanned = meta.get("replanned")
        if replanned:
            warp = ScheduleWarp(int(replanned["total"]), [tuple(k) for k in replanned["knots"]])
            stop = replanned.get("stop")
            if saved != self.steps_per_epoch:
                warp = warp.rescaled(self.steps_per_epoch / saved)
                stop = None if stop is None else int(round(stop * self.steps_per_epoch / saved))
            self.stop_step = None if stop is None else int(stop)
            # in place: the scheduler's function may already hold this object
            self.schedule_warp.total, self.schedule_warp.knots = warp.total, warp.knots
            self.replanned_epochs = int(replanned["epochs"])
            # now, before Lightning decides whether the loop has anything left to do: a run its budget
            # extended past the recipe's epochs and stopped after them would otherwise end at once
            self.trainer.fit_loop.max_epochs = self.replanned_epochs
        if changed:
            from vislab.log import info

            info(f"resume: {self.steps_per_epoch} steps per epoch per process instead of {saved} (another process "
                 "count); the learning-rate schedule continues from the samples seen")

    def resume_words(self) -> str:
        """Where a resumed run continues, in words ("with epoch 3 of 10", "in epoch 3 of 10, after
        640 of its 1,024 training items"); "" when no checkpoint was restored."""
        if self.resumed_at_step is None:
            return ""
        planned = self.trainer.max_epochs
        if self.resumed_position is None:  # a checkpoint without the loader's position
            return f"from optimiser step {self.resumed_at_step}"
        epoch, items = self.resumed_position
        if items == 0:
            return f"with epoch {epoch + 1} of {planned}"
        loader = getattr(self.trainer, "train_dataloader", None)
        per_epoch = epoch_items(loader, self.steps_per_epoch, self.trainer.world_size) if loader is not None else \
            self.steps_per_epoch * self.recipe.batch_size * self.trainer.world_size
        return f"in epoch {epoch + 1} of {planned}, after {items:,} of its {per_epoch:,} training items"

    def facts(self) -> dict[str, Any]:
        """For :class:`vislab.engine.callbacks.HandBack`: the step a resume started from, and the
        epochs a time budget re-planned (None: none)."""
        return {"resumed_at_step": self.resumed_at_step, "replanned_epochs": self.replanned_epochs}

    def before_training(self) -> None:
        """Work that only a run which trains needs, called on the training device before the
        budget's and the history's clocks start, and left out of ``train_seconds`` (the time
        limit, a limit on the invocation's wall time, counts it): the teachers' targets are made
        here, so a finished run's resume, which trains nothing, makes none."""
        if callable(self.teacher_targets):
            self.teacher_targets = self.teacher_targets(self.device)

    def on_train_start(self) -> None:
        # Lightning restores weights, optimiser, schedulers and loops; the RNG states are vislab's
        # (a resumed run's re-planned epochs were set in on_load_checkpoint, before the loop starts)
        if self._rng_to_restore is not None:
            restore_rng(self._rng_to_restore)
            self._rng_to_restore = None
