"""``vislab runs``: the run folders under a folder, a line each: task, model, epochs, minutes
trained, held-out and validation scores, and whether the run finished."""

from __future__ import annotations

import csv
import time
import zipfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Iterable

from vislab.config import recipe_from_dict
from vislab.errors import VislabError
from vislab.runfolders import RECORDS, SCORE_KEYS, epoch_counts, find_runs, process_words, read_run

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
    epochs_trained: int | None = None  # ``epochs`` as numbers, for programs that read --json
    epochs_planned: int | None = None


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
    """``row`` with what the run folder's records (:func:`vislab.runfolders.read_run`) say."""
    recipe, results, history = data["recipe"], data["results"], data["history"]
    row.task, row.model = recipe.get("task"), recipe.get("model")
    held_key, val_key, row.metric = SCORE_KEYS.get(str(row.task), (None, None, None))
    trained, schedule, _ = epoch_counts(data)
    failed = data["failure"]  # the line of the failure that stopped its latest piece
    # what became of its latest piece when neither results nor a failure say
    process = data["process"]
    pending = process_words(process) if process else None
    if schedule is not None:
        row.epochs = str(schedule) if trained in (None, schedule) else f"{trained} of {schedule}"
    row.epochs_trained, row.epochs_planned = (v if isinstance(v, int) and not isinstance(v, bool) else None
                                              for v in (trained, schedule))
    if results:
        seconds = _number(results.get("train_seconds"))
        row.minutes = None if seconds is None else seconds / 60
        row.held_out, row.val = _number(results.get(held_key)), _number(results.get(val_key))
        row.state = "stopped early (max_minutes); --resume continues it" if results.get("stopped_early") else "finished"
        broken = [n for n in ("best.ckpt", "last.ckpt") if (run / n).is_file() and not zipfile.is_zipfile(run / n)]
        if broken:  # the end of the file, where torch's zip keeps its directory, is read: a cut file has none
            row.state += f"; {broken[0]} is cut short or damaged (not the zip file torch writes)"
        if _resumed_after(run, data):
            how = f"stopped: {failed}" if failed else pending or "running, interrupted or failed"
            row.state = f"a --resume started after its results ({how}): the scores are the earlier piece's"
    else:
        clock = data.get("trained_seconds")  # what --resume continues from: part of an epoch, earlier pieces
        if clock is not None:
            row.minutes = clock / 60
        elif history:
            row.minutes = sum(_number(r.get("seconds")) or 0.0 for r in history) / 60
        if history:
            scores = [v for v in (_number(r.get(held_key)) for r in history) if v is not None]
            row.held_out = max(scores) if scores else None
        resumable = "; no checkpoint" if not (run / "last.ckpt").is_file() else \
            "; last.ckpt cannot be read: no --resume from it" if data.get("unreadable") else \
            "; last.ckpt: --resume continues it"
        row.state = f"stopped: {failed}{resumable}" if failed else \
            pending if process and process["alive"] else \
            f"{pending or 'unfinished (running, interrupted or failed)'}{resumable}"
    try:  # a recipe.yaml edited by hand (an unknown field, a value out of range) is no recipe a resume reads
        recipe_from_dict(recipe, source=str(run / "recipe.yaml"))
    except VislabError as exc:
        row.state = f"unreadable: {exc}"
    return row


def _resumed_after(run: Path, data: dict[str, Any]) -> bool:
    """Whether a ``--resume`` started after the run's results were written: command.txt holds
    more commands than results.json counted (results of an older vislab, without that count: when
    last.ckpt is newer than them)."""
    counted = data["results"].get("commands")
    if isinstance(counted, int):
        return len(data["commands"]) > counted
    last, done = run / "last.ckpt", run / "results.json"
    return last.is_file() and last.stat().st_mtime > done.stat().st_mtime


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
    """The rows as JSON values; ``updated_at`` is ``updated`` as a local ISO 8601 time (None: no record)."""
    import datetime

    return [{**asdict(r), "updated_at": datetime.datetime.fromtimestamp(r.updated).astimezone().isoformat(
        timespec="seconds") if r.updated else None} for r in rows]
