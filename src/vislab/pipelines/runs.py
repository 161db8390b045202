"""``vislab runs``: the run folders under a folder, a line each: task, model, epochs, minutes
trained, held-out and validation scores, and whether the run finished."""

from __future__ import annotations

import csv
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Iterable

from vislab.errors import VislabError
from vislab.report import SCORE_KEYS, read_run

RECORDS = ("results.json", "history.csv", "last.ckpt", "best.ckpt", "changes.txt", "recipe.yaml")
"""The files whose newest write is a run's last activity."""

SORTS = ("time", "held-out", "val")


@dataclass
class RunRow:
    """One run folder as ``vislab runs`` lists it (None: not known)."""

    run: str
    task: str | None = None
    model: str | None = None
    epochs: str | None = None  # "13", or "4 of 13" when fewer trained than the schedule
    minutes: float | None = None
    metric: str | None = None  # accuracy, mIoU
    held_out: float | None = None  # the best held-out score (so far, in an unfinished run)
    val: float | None = None
    state: str = ""
    updated: float = 0.0  # the newest write of its records (seconds since the epoch)


def is_run(folder: Path) -> bool:
    """A vislab run folder: its recipe and a record of training, or the command that started it (a
    run stopped in its first epoch, before any checkpoint, holds only that)."""
    return (folder / "recipe.yaml").is_file() and any((folder / n).is_file() for n in (*RECORDS[:4], "command.txt"))


def find_runs(folders: Iterable[Path], depth: int = 2) -> list[Path]:
    """The run folders given, and those up to ``depth`` levels inside the folders given that are
    not runs themselves (hidden folders and a run's own subfolders are not searched)."""
    folders = list(folders)
    found: list[Path] = []
    for folder in folders:
        if not folder.is_dir():
            raise VislabError(folder, "not found" if not folder.exists() else "is not a folder")
        level = [folder]
        for _ in range(depth + 1):
            runs = [d for d in level if is_run(d)]
            found += runs
            level = sorted(c for d in level if d not in runs for c in _subfolders(d))
    if not found:
        what = "(a folder with recipe.yaml beside results.json, history.csv or a checkpoint)"
        if len(folders) == 1:
            raise VislabError(folders[0], f"holds no vislab run folders {what}")
        raise VislabError(None, f"{', '.join(map(str, folders))} hold no vislab run folders {what}")
    return list(dict.fromkeys(found))


def _subfolders(d: Path) -> list[Path]:
    try:
        return [c for c in d.iterdir() if c.is_dir() and not c.name.startswith(".")]
    except OSError:  # unreadable: nothing found there
        return []


def run_row(run: Path) -> RunRow:
    """What ``vislab runs`` shows of one run folder; a record it cannot read is said in ``state``."""

    updated = max((f.stat().st_mtime for f in (run / n for n in RECORDS) if f.is_file()), default=0.0)
    row = RunRow(str(run), updated=updated)
    try:
        return _filled(row, run, read_run(run))
    except VislabError as exc:
        row.state = f"unreadable: {exc}"
    except (ValueError, TypeError, AttributeError, OSError, csv.Error) as exc:  # a record edited or damaged by hand
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        row.state = (f"unreadable: {run}: a record is broken (recipe.yaml, results.json or history.csv: "
                     f"{type(exc).__name__}: {first})")
    return row


def _filled(row: RunRow, run: Path, data: dict[str, Any]) -> RunRow:
    """``row`` with what the run folder's records (:func:`vislab.report.read_run`) say."""
    recipe, results, history = data["recipe"], data["results"], data["history"]
    row.task, row.model = recipe.get("task"), recipe.get("model")
    held_key, val_key, row.metric = SCORE_KEYS.get(str(row.task), (None, None, None))
    schedule = results.get("epochs") or recipe.get("epochs")
    # a finished run's own count (an older vislab's results have none: its history's rows), else the history's
    trained = (results.get("epochs_trained") or len(history) or None) if results else len(history)
    if schedule is not None:
        row.epochs = str(schedule) if trained in (None, schedule) else f"{trained} of {schedule}"
    if results:
        row.minutes = None if results.get("train_seconds") is None else results["train_seconds"] / 60
        row.held_out, row.val = _number(results.get(held_key)), _number(results.get(val_key))
        row.state = "stopped early (max_minutes); --resume continues it" if results.get("stopped_early") else "finished"
        last, done = run / "last.ckpt", run / "results.json"
        if last.is_file() and last.stat().st_mtime > done.stat().st_mtime:
            row.state = "resumed after its results (running or interrupted): the scores are the earlier piece's"
    else:
        if history:
            row.minutes = sum(_number(r.get("seconds")) or 0.0 for r in history) / 60
            scores = [v for v in (_number(r.get(held_key)) for r in history) if v is not None]
            row.held_out = max(scores) if scores else None
        resumable = "; last.ckpt: --resume continues it" if (run / "last.ckpt").is_file() else "; no checkpoint"
        row.state = f"unfinished (running, interrupted or failed){resumable}"
    return row


def _number(value: Any) -> float | None:
    try:
        return None if value in (None, "") else float(value)
    except (TypeError, ValueError):
        return None


def list_runs(folders: Iterable[Path], *, sort: str = "time") -> list[RunRow]:
    """The run folders in and under ``folders``, a row each, sorted by ``sort``: the last write
    (oldest first), or the held-out or validation score (per task, best first; runs without one
    last)."""
    if sort not in SORTS:
        raise VislabError("--sort", f"unknown order {sort!r}; choose {', '.join(SORTS)}")
    rows = [run_row(r) for r in find_runs(list(folders))]
    if sort == "time":
        return sorted(rows, key=lambda r: r.updated)
    key = "held_out" if sort == "held-out" else "val"
    return sorted(rows, key=lambda r: (r.task is None, str(r.task), getattr(r, key) is None, -(getattr(r, key) or 0.0)))


def row_cells(row: RunRow) -> list[str]:
    """A row as the table's text cells."""
    def score(v: float | None) -> str:
        return "-" if v is None else f"{v:.4f}"

    return [row.run, row.task or "?", row.model or "?", row.epochs or "-",
            "-" if row.minutes is None else f"{row.minutes:.1f}", row.metric or "-", score(row.held_out),
            score(row.val), time.strftime("%Y-%m-%d %H:%M", time.localtime(row.updated)) if row.updated else "-",
            row.state]


HEADER = ["run", "task", "model", "epochs", "minutes", "metric", "held-out", "val", "last write", "state"]


def table_lines(rows: list[RunRow]) -> list[str]:
    """The rows as aligned plain-text lines under :data:`HEADER` (the state, last, unpadded)."""
    cells = [HEADER] + [row_cells(r) for r in rows]
    widths = [max(len(c[i]) for c in cells) for i in range(len(HEADER) - 1)]
    return ["  ".join([c.ljust(w) for c, w in zip(line, widths)] + [line[-1]]) for line in cells]


def rows_json(rows: list[RunRow]) -> list[dict[str, Any]]:
    """The rows as JSON values."""
    return [asdict(r) for r in rows]
