"""The one place that builds a Lightning Trainer for a run folder."""

from __future__ import annotations

import csv
import io
import logging
import os
import sys
import warnings
from datetime import timedelta
from pathlib import Path
from typing import Any, Callable

import lightning.pytorch as pl
import yaml
from lightning.pytorch.callbacks import LearningRateMonitor, ModelCheckpoint, RichProgressBar
from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger
from lightning.pytorch.loggers.csv_logs import ExperimentWriter
from lightning.fabric.utilities.exceptions import MisconfigurationException

from vislab.config import Recipe
from vislab.engine.callbacks import EpochHistory, TimeLimit
from vislab.engine.state import AtomicCheckpointIO
from vislab.errors import Interrupted, VislabError
from vislab.io import atomic_write_text


def quiet_lightning() -> None:
    """Silence Lightning's advertising and warnings that do not apply to vislab's layout."""
    for pattern in (".*exists and is not empty.*", ".*LeafSpec.*", ".*on_after_batch_transfer.*",
                    ".*litlogger.*", ".*across ranks is zero.*", ".*does not have many workers.*", ".*smaller than the logging interval.*", ".*`isinstance\\(treespec.*"):
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


class MidEpochCheckpoint(ModelCheckpoint):
    """Time-based saves inside an epoch, never on its last batch: a checkpoint written there (before
    the epoch's validation) would make a resumed run skip that validation and its history row."""

    def on_train_batch_end(self, trainer: pl.Trainer, *args: Any, **kwargs: Any) -> None:
        if trainer.fit_loop.epoch_loop.batch_progress.is_last_batch:
            return
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
    best = ModelCheckpoint(
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
    last = ModelCheckpoint(**last_ckpt)
    # with no held-out split there is nothing to select on: last.ckpt is the result
    callbacks: list[pl.Callback] = [*([best] if recipe.holdout > 0 else []), last, EpochHistory(out_dir),
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
    except (ValueError, TypeError, MisconfigurationException) as exc:  # a setting this machine cannot run
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
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


def check_run_folder(out_dir: Path, *, resume: bool) -> Path | None:
    """Refuse a run folder that cannot take this run (before any data is read); return its
    last.ckpt when resuming."""
    last = out_dir / "last.ckpt"
    if resume:
        if not last.is_file():
            raise VislabError(out_dir, "--resume found no last.ckpt in this run folder")
        from vislab.models.checkpoints import check_readable

        check_readable(last, "--resume continues from it")
        if os.environ.get("RANK", "0") == "0" and os.environ.get("LOCAL_RANK", "0") == "0":
            # a kill inside an atomic write leaves its temporary (.NAME.XXXX.tmp); the killed run is gone
            for tmp in out_dir.glob(".*.tmp"):
                tmp.unlink(missing_ok=True)
        return last
    if last.exists() or (out_dir / "best.ckpt").exists():
        raise VislabError(out_dir, "run folder already holds checkpoints; use --resume or another --out")
    if out_dir.exists() and not out_dir.is_dir():
        raise VislabError(out_dir, "is a file, but a run folder is needed")
    return None


def check_resumed_data(out_dir: Path, *, key: str, digest: str, folder: str | Path) -> None:
    """A resumed run goes on with the data it started on: refuse a training folder whose digest
    (``key`` in the checkpoint's metadata; file names and labels or sizes, not paths) differs from
    the one last.ckpt recorded. A checkpoint without the digest is not checked."""
    import torch

    last = out_dir / "last.ckpt"
    recorded = torch.load(last, map_location="cpu", weights_only=True, mmap=True).get("vislab", {}).get(key)
    if recorded is not None and recorded != digest:
        raise VislabError(folder, f"is not the data {last} was trained on (other files or labels); --resume "
                                  "continues a run on the training folder it started with")


def prepare_run_folder(out_dir: Path, recipe: Recipe, *, resume: bool, command: str,
                       changes: list[str] | None = None) -> Path | None:
    """Create the run folder and write the resolved recipe (and ``changes.txt``, the settings the
    data decided); return last.ckpt when resuming.

    A resume without a checkpoint is an error (Lightning would silently start afresh).
    A new run refuses a folder that already holds checkpoints, so nothing is overwritten.
    A resumed piece appends to ``changes.txt`` the lines its earlier pieces did not record.
    """
    last = check_run_folder(out_dir, resume=resume)
    if resume:
        recorded = read_changes(out_dir)
        new = [line for line in changes or [] if line not in recorded]
        if new:
            write_changes(out_dir, recorded + new)
        return last
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise VislabError(out_dir, f"cannot create run folder ({exc.strerror})") from None
    atomic_write_text(yaml.safe_dump(recipe.to_dict(), sort_keys=False), out_dir / "recipe.yaml")
    atomic_write_text(command + "\n", out_dir / "command.txt")
    if changes:
        write_changes(out_dir, changes)
    return None


def write_changes(out_dir: Path, changes: list[str]) -> None:
    """``changes.txt``: the settings the run decided or changed, a line each."""
    atomic_write_text("".join(f"{line}\n" for line in changes), out_dir / "changes.txt")


def read_changes(out_dir: Path) -> list[str]:
    """The lines of ``changes.txt`` (every piece of a resumed run), or [] when there is none."""
    path = out_dir / "changes.txt"
    return path.read_text().splitlines() if path.is_file() else []


def add_change(out_dir: Path, line: str) -> None:
    """One more line at the end of ``changes.txt`` (kept whole: written atomically)."""
    write_changes(out_dir, read_changes(out_dir) + [line])


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


def step_precision(precision: str, device_type: str) -> tuple[Any, bool]:
    """(dtype other than float32 or None, whether it runs as autocast) of a Lightning precision
    on a device: "bf16-mixed" autocasts to bfloat16, "16-mixed" to float16 on GPUs (Lightning
    turns it into bf16-mixed on CPUs), "bf16-true"/"16-true"/"64" cast the whole network; 32:
    (None, False)."""
    import torch

    if precision.startswith("64"):
        return torch.float64, False
    half = torch.bfloat16 if precision.startswith("bf16") else torch.float16 if precision.startswith("16") else None
    if half is None or precision.endswith("-true"):
        return half, False
    if device_type == "cpu" and half is torch.float16:
        half = torch.bfloat16
    return half, True


def seconds_per_step(module: pl.LightningModule, loader: Any, device: Any, *, steps: int = 5,
                     side: int | None = None, precision: str | None = None) -> float:
    """Wall seconds of one training step (forward, backward, optimiser step) of a copy of
    ``module``'s network in ``precision`` (the trainer's, default the recipe's) on ``loader``'s
    first batches: the median of ``steps`` steps after one warm-up step (the fastest step
    under-estimated a 2-core epoch by a fifth); the warm-up step itself when the loader has only
    one batch; a segmenter's teacher forwards (distillation) are timed with it. The module, its
    weights and the global RNG states are left as they were.
    ``side``: a classifier's batches at that input side instead of its own."""
    import time

    import torch

    half, amp = step_precision(str(precision or module.recipe.precision), device.type)
    net, cast = _probe_copy(module.net, device, None if amp else half)
    net.train()
    opt = torch.optim.SGD([p for p in net.parameters() if p.requires_grad], lr=0.0)
    batches = iter(loader)
    times, warm_up = [], None
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        for i in range(steps + 1):
            try:
                batch = next(batches)
            except StopIteration:
                break
            batch = [b.to(device) if hasattr(b, "to") else b for b in batch]
            if device.type == "cuda":
                torch.cuda.synchronize()
            t0 = time.perf_counter()
            x, y = _probe_input(module, batch, side, cast)
            with torch.autocast(device.type, dtype=half or torch.bfloat16, enabled=amp):
                out = net(x)
                if getattr(module, "teacher", None) is not None:  # a segmenter's distillation: its teachers' forwards
                    module.soft_targets(x.float())
            loss = torch.nn.functional.cross_entropy(out.float(), y.long(), ignore_index=255)
            opt.zero_grad()
            loss.backward()
            opt.step()
            if device.type == "cuda":
                torch.cuda.synchronize()
            if i:  # the first step warms caches and allocators
                times.append(time.perf_counter() - t0)
            else:
                warm_up = time.perf_counter() - t0
    if warm_up is None:
        raise VislabError(None, "--budget: the training split has no batch to time a step on")
    return sorted(times)[len(times) // 2] if times else warm_up


def _probe_copy(net: Any, device: Any, cast: Any) -> tuple[Any, Any]:
    """A timing probe's copy of ``net`` on ``device`` and the dtype its input takes: ``cast`` for
    "-true" and 64 precisions (the whole network in that dtype), None under autocast or fp32."""
    import copy

    copied = copy.deepcopy(net).to(device)
    return (copied if cast is None else copied.to(cast)), cast


def _probe_input(module: pl.LightningModule, batch: list, side: int | None, cast: Any) -> tuple[Any, Any]:
    """A timing probe's network input and targets from a training batch on the device: the
    on-device augmentation left out, except a segmenter's crop size; ``cast``: the input dtype."""
    x, y = batch[0], batch[1]
    crop = module.recipe.crop_size if module.task == "seg" else None
    if crop:
        x, y = x[..., :crop, :crop], y[..., :crop, :crop]
    x = module.prepare(x) if side is None else module.prepare(x, side)
    return (x if cast is None else x.to(cast)), y


def seconds_per_forward(module: pl.LightningModule, loader: Any, device: Any, *, reps: int = 2,
                        precision: str | None = None) -> float:
    """Wall seconds of one held-out forward pass over ``loader``'s first batch (the median of
    ``reps`` after a warm-up): a copy of the evaluated network in eval mode, without gradients
    and outside a ``*-mixed`` precision's autocast, as :meth:`VislabModule.held_out_logits` runs
    it (a ``*-true`` precision's dtype kept). The budget prices the held-out batches with it."""
    import time

    import torch

    half, amp = step_precision(str(precision or module.recipe.precision), device.type)
    net, cast = _probe_copy(module.eval_net, device, None if amp else half)
    net.eval()
    try:
        batch = next(iter(loader))
    except StopIteration:
        raise VislabError(None, "--budget: the training split has no batch to time a held-out pass on") from None
    times = []
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []), torch.inference_mode():
        x, _ = _probe_input(module, [b.to(device) if hasattr(b, "to") else b for b in batch], None, cast)
        for _ in range(reps + 1):
            if device.type == "cuda":
                torch.cuda.synchronize()
            t0 = time.perf_counter()
            net(x)
            if device.type == "cuda":
                torch.cuda.synchronize()
            times.append(time.perf_counter() - t0)
    return sorted(times[1:])[len(times[1:]) // 2]


def resize_step_costs(module: pl.LightningModule, loader: Any, device: Any, end_seconds: float,
                      precision: str | None = None) -> tuple[Callable[[int], list[float]] | None, str]:
    """For a progressive resize (``resize_from``), the seconds of a step in each epoch of an
    n-epoch schedule, from one more timing at the first side (``end_seconds``: the timing at
    ``image_size``; sides between, interpolated in pixels), and how they were measured; else
    (None, "")."""
    from vislab.data.classification import progressive_sides

    r = module.recipe
    if not hasattr(module, "sides") or r.resize_from is None or r.image_size is None or r.resize_from == r.image_size:
        return None, ""
    s0, s1, t1 = r.resize_from, r.image_size, end_seconds
    t0 = seconds_per_step(module, loader, device, side=s0, precision=precision)

    def at(side: int) -> float:
        return t0 + (t1 - t0) * (side ** 2 - s0 ** 2) / (s1 ** 2 - s0 ** 2)

    how = (f"{t0:.3g} s per training step at {s0} px and {t1:.3g} s at {s1} px measured here (progressive resizing: "
           "the sides between interpolated in pixels)")
    return (lambda n: [at(side) for side in progressive_sides(s0, s1, n)]), how


def checkpoint_seconds(module: pl.LightningModule) -> float:
    """Wall seconds to write one full checkpoint of ``module``, measured by saving its weights
    (times 3: Adam-family optimisers keep two more tensors per weight) to a temporary file."""
    import tempfile
    import time

    import torch

    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        torch.save(module.state_dict(), Path(tmp) / "probe.pt")
        return 3 * (time.perf_counter() - t0)


def budget_epochs(recipe: Recipe, step_seconds: float, steps_per_epoch: int, holdout_batches: int, *,
                  eval_scale: float = 1.0, epoch_overhead: float = 0.0,
                  epoch_steps: Callable[[int], list[float]] | None = None, how: str = "",
                  forward_seconds: float | None = None) -> tuple[Recipe, str]:
    """The recipe with ``epochs`` (and, when whole epochs would leave much of the time unused, a
    number of batches per epoch) set to fill ``budget_minutes`` of training, and a line saying how.

    An epoch costs its steps, the held-out evaluation (per batch, a forward pass of a training
    batch, ``forward_seconds`` as measured by :func:`seconds_per_forward` or else a third of a
    step, times ``eval_scale``, the evaluated pixels per training pixel), 10 % of both for data
    loading and logging, and ``epoch_overhead`` (the epoch's checkpoint writes). If the budget holds x
    full epochs, the run gets ceil(x - 0.05) epochs of as many batches as fit (each epoch a fresh
    shuffle, so 1.9 epochs' worth is two epochs of 95 % of the batches, not one); a recipe that
    limits its batches itself gets whole epochs. At least one epoch of one batch.

    ``epoch_steps(n)`` gives the seconds of a step in each epoch of an n-epoch schedule whose
    epochs differ (a progressive resize; ``how`` says how they were measured); by default every
    step takes ``step_seconds``, which also prices the held-out evaluation.
    """
    import math

    assert recipe.budget_minutes is not None
    budget = recipe.budget_minutes * 60
    steps_of = epoch_steps or (lambda n: [step_seconds] * n)
    forward = step_seconds / 3 if forward_seconds is None else forward_seconds
    fixed = 1.1 * holdout_batches * eval_scale * forward + epoch_overhead

    def full(n: int) -> float:  # seconds of n whole epochs
        return 1.1 * steps_per_epoch * sum(steps_of(n)) + n * fixed

    epoch_s = full(1) if epoch_steps is None else full(recipe.epochs) / recipe.epochs
    timed = how or f"{step_seconds:.3g} s per training step measured here"
    if recipe.compile:  # the probe runs an eager copy of the network
        timed += " without torch.compile"
    held_out = f"{holdout_batches} held-out batches per epoch"
    if holdout_batches and forward_seconds is not None:
        held_out += f" at {forward_seconds * eval_scale:.3g} s each"
    per_epoch = f"at {timed} ({steps_per_epoch} steps and " \
                f"{held_out}, {epoch_overhead:.1f} s of checkpoint writes: " \
                f"about {epoch_s:.1f} s per epoch{'' if epoch_steps is None else ' on average'})"
    if epoch_steps is None:  # equal epochs: in closed form
        most = max(1, int(budget // epoch_s))
        fewest = max(1, math.ceil(budget / epoch_s - 0.05))
    else:  # epochs that differ with their number (at most 1,000)
        fits = [n for n in range(1, 1001) if full(n) <= budget]
        most = max(fits or [1])
        fewest = next((n for n in range(1, 1001) if full(n) * (n + 0.05) / n >= budget), 1000)
    if recipe.limit_train_batches is not None:
        return recipe.with_overrides(epochs=most), f"epochs {recipe.epochs} -> {most}: --budget " \
                                                   f"{recipe.budget_minutes:g} min {per_epoch}{_warmup_past(recipe, most)}"
    epochs = fewest  # the fewest epochs whose full length, stretched by 5 % of an epoch, reaches the budget
    step_cost = 1.1 * (step_seconds if epoch_steps is None else sum(steps_of(epochs)) / epochs)  # on average
    batches = min(steps_per_epoch, max(1, int((budget / epochs - fixed) // step_cost)))
    line = f"epochs {recipe.epochs} -> {epochs}"
    if batches < steps_per_epoch:
        line += f" of {batches} of their {steps_per_epoch} batches (a fresh shuffle each)"
        recipe = recipe.with_overrides(limit_train_batches=batches)
    return recipe.with_overrides(epochs=epochs), \
        f"{line}: --budget {recipe.budget_minutes:g} min {per_epoch}{_warmup_past(recipe, epochs)}"


def _warmup_past(recipe: Recipe, epochs: int) -> str:
    """The end of a budget line whose planned run is shorter than the recipe's warm-up."""
    if recipe.warmup_epochs <= epochs:
        return ""
    return f"; warning: warmup_epochs {recipe.warmup_epochs:g} is longer than these {epochs} epochs, so the " \
           "learning rate never reaches lr"


def fit_and_select(trainer: pl.Trainer, module: pl.LightningModule, data: pl.LightningDataModule,
                   out_dir: Path, ckpt_path: Path | None, *, metric: str) -> tuple[dict, Path] | None:
    """Run ``fit``; on rank 0 return ({train_seconds, held-out best score}, best checkpoint path).

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
            raise Interrupted(f"{out_dir}: interrupted; last.ckpt keeps the last saved state") from None
        raise
    if not trainer.is_global_zero:
        return None
    best = out_dir / "best.ckpt" if (out_dir / "best.ckpt").is_file() else out_dir / "last.ckpt"
    if not best.is_file():
        raise VislabError(out_dir, f"training ended without writing a checkpoint "
                                   f"({trainer.global_step} optimiser steps ran)")
    score = getattr(trainer.checkpoint_callback, "best_model_score", None)
    result = {"train_seconds": round(time.perf_counter() - t0, 1),
              metric: None if score is None else round(float(score), 6), "global_step": trainer.global_step}
    limit = next((c for c in trainer.callbacks if isinstance(c, TimeLimit)), None)  # type: ignore[attr-defined]
    if limit is not None and limit.stopped:
        from vislab.log import info

        info(f"warning: {limit.stopped}")
        add_change(out_dir, f"warning: {limit.stopped}")  # the run folder says it too
        result["stopped_early"] = limit.stopped
    return result, best


def read_results(out_dir: Path) -> dict:
    """The run folder's ``results.json`` ({} when there is none, or it cannot be read)."""
    import json

    try:
        return json.loads((out_dir / "results.json").read_text())
    except (OSError, ValueError):
        return {}


def write_results(out_dir: Path, result: dict) -> None:
    """``results.json`` in the run folder, and a one-line summary."""
    import json

    from vislab.log import info

    result["checkpoint"] = str(result["checkpoint"])
    atomic_write_text(json.dumps(result, indent=2), out_dir / "results.json")
    info(f"done: {json.dumps({k: v for k, v in result.items() if k not in ('val', 'train_masks')})}")
