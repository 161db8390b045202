"""Callbacks: per-epoch history file and a one-line epoch summary for logs."""

from __future__ import annotations

import csv
import io
import time
from pathlib import Path
from typing import Any

import lightning.pytorch as pl

from vislab.io import atomic_write_text
from vislab.log import info


class EpochHistory(pl.Callback):
    """Write ``history.csv`` (one row per epoch) in the run folder and print a summary line."""

    def __init__(self, out_dir: Path) -> None:
        self.path = Path(out_dir) / "history.csv"
        self._t0 = 0.0

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._t0 = time.perf_counter()  # a run resumed mid-epoch gets no on_train_epoch_start

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._t0 = time.perf_counter()

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not trainer.is_global_zero or trainer.sanity_checking:
            return
        epoch = trainer.current_epoch
        row: dict[str, Any] = {"epoch": epoch + 1}
        for k, v in sorted(trainer.callback_metrics.items()):
            if k.endswith("_step") or k.startswith("lr-"):
                continue
            row[k.removesuffix("_epoch")] = round(float(v), 6)
        row["lr"] = trainer.optimizers[0].param_groups[0]["lr"]
        row["seconds"] = round(time.perf_counter() - self._t0, 2)
        rows = self._read()
        rows = [r for r in rows if int(r["epoch"]) < epoch + 1] + [row]
        keys: list[str] = []
        for r in rows:
            keys += [k for k in r if k not in keys]
        buf = io.StringIO()
        w = csv.DictWriter(buf, fieldnames=keys)
        w.writeheader()
        w.writerows(rows)
        atomic_write_text(buf.getvalue(), self.path)
        shown = " ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in row.items() if k != "epoch")
        info(f"epoch {epoch + 1}/{trainer.max_epochs} {shown}")

    def _read(self) -> list[dict[str, Any]]:
        if not self.path.is_file():
            return []
        with self.path.open() as fh:
            return list(csv.DictReader(fh))


class TimeLimit(pl.Callback):
    """The recipe's ``max_minutes``: after an epoch that ends past the limit, training stops (and
    ``stopped`` says so). The limit is per invocation and checked at epoch ends only, so the
    checkpoint holds whole epochs and ``--resume`` continues with the next one (Lightning's
    ``max_time`` stops mid-epoch, saves its elapsed time in the checkpoint and stops a resumed
    run at once)."""

    def __init__(self, minutes: float) -> None:
        self.minutes = minutes
        self._t0 = time.monotonic()
        self.stopped: str | None = None

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._t0 = time.monotonic()

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        done = trainer.current_epoch + 1
        if done >= (trainer.max_epochs or 0) or (time.monotonic() - self._t0) / 60 < self.minutes:
            return
        self.stopped = (f"max_minutes ({self.minutes:g}) reached after epoch {done} of {trainer.max_epochs}: "
                        "training stopped before the end of its schedule; `--resume` continues it")
        trainer.should_stop = True

