"""The one place that builds a Lightning Trainer for a run folder."""

from __future__ import annotations

import csv
import dataclasses
import io
import logging
import sys
import warnings
from datetime import timedelta
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
from lightning.pytorch.callbacks import LearningRateMonitor, ModelCheckpoint, RichProgressBar
from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger
from lightning.pytorch.loggers.csv_logs import ExperimentWriter
from lightning.fabric.utilities.exceptions import MisconfigurationException

from vislab.config import Recipe
from vislab.engine.callbacks import BeforeTraining, EpochHistory, FiniteLoss, HandBack, TimeLimit, handed_back
from vislab.engine.run_folder import add_change
from vislab.engine.state import AtomicCheckpointIO
from vislab.errors import Interrupted, VislabError
from vislab.io import atomic_write_text
from vislab.models.checkpoints import checkpoint_file


def quiet_lightning() -> None:
    """Silence Lightning's advertising and warnings that do not apply to vislab's layout."""
    for pattern in (".*exists and is not empty.*", ".*LeafSpec.*", ".*on_after_batch_transfer.*",
                    ".*litlogger.*", ".*across ranks is zero.*", ".*does not have many workers.*", ".*smaller than the logging interval.*", ".*`isinstance\\(treespec.*",
                    ".*AMP with fp16 is not supported on CPU.*"):  # vislab's own `setting:` line says it
        warnings.filterwarnings("ignore", message=pattern)
    logging.getLogger("lightning.pytorch.utilities.rank_zero").setLevel(logging.WARNING)


class _AppendingWriter(ExperimentWriter):
    """Lightning's CSV writer deletes an existing metrics.csv; a resumed run must append to it.

    Each save also rewrites the file atomically: Lightning truncates and refills it whenever a new
    column appears, so a kill at that moment (the first epoch end) lost the rows logged before."""

    def _check_log_dir_exists(self) -> None:
        if self._fs.isfile(self.metrics_file_path):
            with open(self.metrics_file_path, newline="") as fh:
                header = fh.readline().strip()
            self.metrics_keys = header.split(",") if header else []

    def save(self) -> None:
        if not self.metrics:
            return
        path = Path(self.metrics_file_path)
        rows: list[dict[str, Any]] = []
        if path.is_file():
            with path.open(newline="") as fh:
                rows = list(csv.DictReader(fh))
        self._record_new_keys()
        self._rewrite(path, rows + self.metrics)
        self.metrics = []

    def _rewrite(self, path: Path, rows: list[dict[str, Any]]) -> None:
        buf = io.StringIO(newline="")
        writer = csv.DictWriter(buf, fieldnames=self.metrics_keys)
        writer.writeheader()
        writer.writerows(rows)
        atomic_write_text(buf.getvalue(), path)

    def drop_from(self, step: int) -> int:
        """Remove the rows logged at ``step`` or later (a resumed run logs them again); returns how
        many there were."""
        path = Path(self.metrics_file_path)
        if not path.is_file():
            return 0
        with path.open(newline="") as fh:
            rows = list(csv.DictReader(fh))
        kept = [r for r in rows if not r.get("step") or int(r["step"]) < step]
        if len(kept) < len(rows):
            self._rewrite(path, kept)
        return len(rows) - len(kept)


class ResumableCSVLogger(CSVLogger):
    """``CSVLogger`` that keeps the rows written before a resume, and drops those written after
    the checkpoint it resumes from (a kill between a checkpoint and the next one leaves rows
    that the resumed run logs again)."""

    @property
    def experiment(self) -> ExperimentWriter:  # type: ignore[override]
        if self._experiment is None:
            self._fs.makedirs(self.root_dir, exist_ok=True)
            self._experiment = _AppendingWriter(log_dir=self.log_dir)
        return self._experiment


class _ExactMetricsLog(pl.Callback):
    """metrics.csv without repeated rows across a kill and ``--resume``: every row logged before a
    checkpoint is on disk before the checkpoint is written, and a resumed fit (rank 0) removes the
    rows at or after the step it restored, which it logs again. (Epoch-level training averages
    are logged after the epoch's checkpoint; a kill in those milliseconds loses that one row.)"""

    def on_save_checkpoint(self, trainer: pl.Trainer, pl_module: pl.LightningModule, checkpoint: dict) -> None:
        if trainer.is_global_zero:
            for lg in trainer.loggers:
                if isinstance(lg, ResumableCSVLogger):
                    lg.experiment.save()

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.ckpt_path is None or not trainer.is_global_zero:
            return
        step = trainer.fit_loop.epoch_loop._batches_that_stepped  # the step the loggers stamp rows with
        for lg in trainer.loggers:
            if isinstance(lg, ResumableCSVLogger):
                lg.experiment.drop_from(step)


class FolderCheckpoint(ModelCheckpoint):
    """A ModelCheckpoint whose record survives its run folder being moved or copied: the paths it
    recorded under the old folder are read under the new one. Lightning drops the best score and
    paths of a checkpoint from another folder (a warning), and the next epoch would then replace
    best.ckpt whatever its score."""

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        old, new = state_dict.get("dirpath"), self.dirpath
        if old is not None and new is not None and str(old) != str(new):

            def moved(path: Any) -> Any:
                return str(Path(new) / Path(path).name) if path and Path(path).parent == Path(old) else path

            state_dict = {**state_dict, "dirpath": new,
                          **{k: moved(state_dict.get(k)) for k in ("best_model_path", "kth_best_model_path",
                                                                     "last_model_path") if k in state_dict},
                          "best_k_models": {moved(k): v for k, v in state_dict.get("best_k_models", {}).items()}}
        super().load_state_dict(state_dict)

    @property
    def state_key(self) -> str:
        """Lightning's ModelCheckpoint key (its class name, then its settings): the checkpoints of
        runs an earlier vislab wrote resume alike. A subclass keeps its own name."""
        key, mine = super().state_key, type(self).__qualname__
        return ModelCheckpoint.__qualname__ + key[len(mine):] if type(self) is FolderCheckpoint else key


class MidEpochCheckpoint(FolderCheckpoint):
    """Time-based saves inside an epoch, never on its last batch (nor on one a budget ended it
    with): a checkpoint written there (before the epoch's validation) would make a resumed run
    skip that validation and its history row."""

    def on_train_batch_end(self, trainer: pl.Trainer, *args: Any, **kwargs: Any) -> None:
        if trainer.fit_loop.epoch_loop.batch_progress.is_last_batch or trainer.should_stop:
            return  # should_stop: a budget ended the epoch early here (BudgetKeeper, a callback before this one)
        super().on_train_batch_end(trainer, *args, **kwargs)


def _devices(value: str) -> int | str | list[int]:
    if value == "auto":
        return "auto"
    if "," in value:
        return [int(v) for v in value.split(",") if v]
    return int(value)


def build_trainer(recipe: Recipe, out_dir: Path, *, monitor: str, extra_callbacks: list | None = None) -> pl.Trainer:
    """A Trainer writing logs and full-state checkpoints (best.ckpt, last.ckpt) into ``out_dir``."""
    quiet_lightning()
    best = FolderCheckpoint(
        dirpath=out_dir,
        filename="best",
        monitor=monitor,
        mode="max",
        save_top_k=1,
        enable_version_counter=False,
        auto_insert_metric_name=False,
    )
    # A checkpoint of its own for last.ckpt: with save_last=True, Lightning 2.6 writes last.ckpt
    # only in the epochs where the monitored metric improved (a 9-epoch run's last.ckpt held
    # epoch 7), so --resume would repeat epochs.
    last_ckpt = {"dirpath": out_dir, "filename": "last", "monitor": None, "save_top_k": 1,
                 "enable_version_counter": False, "auto_insert_metric_name": False}
    last = FolderCheckpoint(**last_ckpt)
    # with no held-out split there is nothing to select on: last.ckpt is the result
    callbacks: list[pl.Callback] = [BeforeTraining(), HandBack(), FiniteLoss(), *([best] if recipe.holdout > 0 else []), last, EpochHistory(out_dir),
                                    LearningRateMonitor("step"), _ExactMetricsLog()]
    if recipe.max_minutes is not None:
        callbacks.append(TimeLimit(recipe.max_minutes))
    if recipe.checkpoint_minutes is not None:  # mid-epoch last.ckpt: long CPU epochs survive a kill
        callbacks.append(MidEpochCheckpoint(**last_ckpt, train_time_interval=timedelta(minutes=recipe.checkpoint_minutes)))
    if sys.stderr.isatty():
        callbacks.append(RichProgressBar())
    callbacks += extra_callbacks or []
    try:
        return _trainer(recipe, out_dir, callbacks)
    except (ValueError, TypeError, ImportError, MisconfigurationException) as exc:  # a setting this machine cannot run
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        if isinstance(exc, ImportError):  # tpu without torch_xla, or a logger's package
            raise VislabError(None, f"cannot build the trainer here, a package it needs is missing: {first} "
                                    f"(accelerator {recipe.accelerator!r}, strategy {recipe.strategy!r})") from None
        raise VislabError(None, f"cannot train with accelerator {recipe.accelerator!r}, devices {recipe.devices!r}, "
                                f"strategy {recipe.strategy!r} here: {first}") from None


def _trainer(recipe: Recipe, out_dir: Path, callbacks: list[pl.Callback]) -> pl.Trainer:
    return pl.Trainer(
        default_root_dir=out_dir,
        max_epochs=recipe.epochs,
        accelerator=recipe.accelerator,
        devices=_devices(recipe.devices),
        num_nodes=recipe.num_nodes,
        strategy=recipe.strategy,
        precision=recipe.precision,  # type: ignore[arg-type]
        logger=[
            ResumableCSVLogger(out_dir, name="", version=""),
            TensorBoardLogger(out_dir, name="tensorboard", version=""),
        ],
        callbacks=callbacks,
        plugins=[AtomicCheckpointIO()],
        use_distributed_sampler=False,  # vislab's samplers shard themselves, without padding
        num_sanity_val_steps=0,
        enable_progress_bar=sys.stderr.isatty(),
        enable_model_summary=False,
        log_every_n_steps=10,
        limit_train_batches=recipe.limit_train_batches,
        deterministic=False,
        benchmark=False,
    )


def resolve_lr(recipe: Recipe, trainer: pl.Trainer) -> tuple[Recipe, list[str]]:
    """A recipe without ``lr`` gets the optimiser's rule for the global batch (one line saying so)."""
    from vislab.engine.optim import scaled_lr

    if recipe.lr is not None:
        return recipe, []
    batch = recipe.batch_size * trainer.world_size
    lr = float(f"{scaled_lr(recipe.optimizer, batch):.3g}")
    return recipe.with_overrides(lr=lr), [f"lr {lr:g}: the {recipe.optimizer} rule for a global batch of {batch} "
                                          "(the recipe sets none; engine/optim.py LR_RULES)"]


def steps_per_epoch(trainer: pl.Trainer, recipe: Recipe, n_train: int) -> int:
    """Optimizer steps per epoch on one process (sizes the LR schedule before fit starts)."""
    steps = max(1, (n_train // trainer.world_size) // recipe.batch_size)
    limit = recipe.limit_train_batches
    if isinstance(limit, float):  # a fraction of the batches, as Lightning counts it
        steps = max(1, int(steps * limit))
    elif isinstance(limit, int):
        steps = min(steps, limit)
    return steps


def at_least_one_batch(trainer: pl.Trainer, recipe: Recipe, n_train: int) -> pl.Trainer:
    """``trainer`` made to train one batch per epoch where the recipe's fraction of the batches
    rounds to none (Lightning would stop with an error), as :func:`steps_per_epoch` counts it."""
    limit = recipe.limit_train_batches
    if isinstance(limit, float) and limit < 1:
        every = steps_per_epoch(trainer, dataclasses.replace(recipe, limit_train_batches=None), n_train)
        if int(every * limit) == 0:
            trainer.limit_train_batches = 1
    return trainer


def fit_and_select(trainer: pl.Trainer, module: pl.LightningModule, data: pl.LightningDataModule,
                   out_dir: Path, ckpt_path: Path | None, *,
                   metric: str) -> tuple[dict[str, Any], Path, dict[str, Any]] | None:
    """Run ``fit``; on rank 0 return ({train_seconds, held-out best score, global_step}, best
    checkpoint path, the facts the run handed back (:class:`~vislab.engine.callbacks.HandBack`),
    read the same way whichever process trained). ``train_seconds`` leaves out the module's work
    before training (distillation's soft maps).

    Other ranks return None: evaluation after training happens once, on rank 0.
    """
    import time

    t0 = time.perf_counter()
    try:
        trainer.fit(module, datamodule=data, ckpt_path=ckpt_path)
    except VislabError as exc:
        if exc.path is None and ckpt_path is not None and exc.message.startswith("cannot resume"):
            # the module's resume checks: the checkpoint is the file they read
            raise VislabError(ckpt_path, exc.message) from None
        raise
    except SystemExit:
        # Lightning answers Ctrl-C with a graceful shutdown and sys.exit(1); vislab reports an
        # interruption as one (exit status 130, what was saved is kept)
        if trainer.interrupted:
            if (out_dir / "last.ckpt").is_file():
                raise Interrupted(f"{out_dir}: last.ckpt keeps the last saved state; `--resume` continues it") from None
            raise Interrupted(f"{out_dir}: before its first checkpoint, so there is nothing to resume; run the "
                              "same command again (without --resume) to start afresh") from None
        raise
    if not trainer.is_global_zero:
        return None
    facts = handed_back(trainer)
    steps = facts.get("global_step", trainer.global_step)
    try:
        best = checkpoint_file(out_dir)
    except VislabError:
        raise VislabError(out_dir, f"training ended without writing a checkpoint ({steps} optimiser steps ran)") from None
    score = facts.get("best_score")
    result = {"train_seconds": round(time.perf_counter() - t0 - facts.get("before_training_seconds", 0.0), 1),
              metric: None if score is None else round(float(score), 6), "global_step": steps}
    if best.name == "best.ckpt":  # the epoch whose held-out score chose it (saved at that epoch's end)
        import torch

        try:
            epoch = torch.load(best, map_location="cpu", weights_only=True, mmap=True).get("epoch")
        except Exception:  # noqa: BLE001 - unreadable here: its loading later names the problem
            epoch = None
        if isinstance(epoch, int):
            result["best_epoch"] = epoch + 1
    stopped = facts.get("stopped_early")
    if stopped:
        from vislab.log import info

        info(f"warning: {stopped}")
        add_change(out_dir, f"warning: {stopped}")  # the run folder says it too
        result["stopped_early"] = stopped
    return result, best, facts
