"""Run folders as `vislab train` leaves them: which folders are runs, reading their records, and
the facts both `vislab report` and `vislab runs` show (one rule for both)."""

from __future__ import annotations

import csv
import json
import os
import socket
import time
from pathlib import Path
from typing import Any, Iterable

import yaml

from vislab.errors import VislabError, yaml_problem
from vislab.io import FAILED, RUNNING

SCORE_KEYS = {"cls": ("holdout_acc", "val_accuracy", "accuracy"), "seg": ("holdout_miou", "val_miou", "mIoU")}
"""Per task: the held-out score's key (results.json and history.csv), the validation score's, and its name."""

RECORDS = ("results.json", "history.csv", "last.ckpt", "best.ckpt", "changes.txt", "recipe.yaml")
"""The files whose newest write is a run's last activity."""

TRAINING_RECORDS = ("results.json", "history.csv", "last.ckpt", "best.ckpt", "command.txt")
"""Beside ``recipe.yaml``, any one of these makes a folder a run (:func:`is_run`)."""

SEARCH_DEPTH = 2
"""How many levels inside a folder that is not a run the run folders are looked for."""


def csv_rows(path: Path) -> list[dict[str, str]]:
    """The rows of a CSV file with a header line."""
    with path.open(newline="") as fh:
        return list(csv.DictReader(fh))


def check_history(rows: list[dict[str, Any]], path: Path) -> None:
    """``history.csv`` as vislab writes it, else one error naming the first row that is not: a
    header of names led by ``epoch``, epochs 1, 2, ... in order, and in every row one number (or an
    empty cell, a value an epoch did not log) per column; curves are drawn from nothing else."""
    names = [n for n in rows[0] if n is not None] if rows else []  # None: the key of a row's extra cells
    if rows and (names[0] != "epoch" or not all(n.strip() and n.isprintable() for n in names)):
        raise VislabError(path, f"line 1 is not the header vislab writes (epoch, then metric names): {names[:6]}")
    for i, row in enumerate(rows):
        line = i + 2
        if None in row or None in row.values():
            raise VislabError(path, f"line {line} has {'more' if None in row else 'fewer'} cells than the header")
        if row["epoch"] != str(i + 1):
            raise VislabError(path, f"line {line}: epoch {row['epoch']!r} where epoch {i + 1} belongs")
        for k, v in row.items():
            try:
                if v != "":
                    float(v)
            except ValueError:
                raise VislabError(path, f"line {line}: {k} {v!r} is not a number") from None


def is_run(folder: Path) -> bool:
    """A vislab run folder: its recipe and a record of training, or the command that started it (a
    run stopped in its first epoch, before any checkpoint, holds only that)."""
    return (folder / "recipe.yaml").is_file() and any((folder / n).is_file() for n in TRAINING_RECORDS)


def find_runs(folders: Iterable[Path], depth: int = SEARCH_DEPTH) -> list[Path]:
    """The run folders given (a folder given with a ``recipe.yaml`` is taken as one, so that what
    it lacks or cannot be read is named), and those up to ``depth`` levels inside the folders given
    that are not runs themselves (hidden folders and a run's own subfolders are not searched); a
    folder with none is an error naming it."""
    folders = [Path(f) for f in folders]
    found: list[Path] = []
    for folder in folders:
        if not folder.is_dir():
            raise VislabError(folder, "not found" if not folder.exists() else "is not a folder")
        if (folder / "recipe.yaml").is_file():
            found.append(folder)
            continue
        level = [folder]
        for _ in range(depth + 1):
            runs = [d for d in level if is_run(d)]
            found += runs
            level = sorted(c for d in level if d not in runs for c in _subfolders(d))
    if not found:
        what = (f"(a folder with recipe.yaml beside results.json, history.csv, a checkpoint or command.txt, in it "
                f"or up to {depth} levels inside)")
        if len(folders) == 1:
            raise VislabError(folders[0], f"holds no vislab run folders {what}")
        raise VislabError(None, f"{', '.join(map(str, folders))} hold no vislab run folders {what}")
    return list(dict.fromkeys(found))


def _subfolders(d: Path) -> list[Path]:
    try:
        return [c for c in d.iterdir() if c.is_dir() and not c.name.startswith(".")]
    except OSError:  # unreadable: nothing found there
        return []


def read_run(run: Path) -> dict[str, Any]:
    """A run folder's records: its recipe, history rows, results ({} before the run's end), the
    command that started it and those that resumed it (all of them in ``commands``), its settings
    lines, the line of the failure that stopped its latest piece (``failure``, None when none did),
    the process that trains or trained that piece (``process``: :func:`training_process`); a
    record that cannot be read is one error naming its file."""
    if not run.is_dir():
        raise VislabError(run, "run folder not found")
    if not (run / "recipe.yaml").is_file():
        raise VislabError(run, "not a vislab run folder (no recipe.yaml)")
    try:
        recipe = yaml.safe_load((run / "recipe.yaml").read_text())
    except yaml.YAMLError as exc:
        raise VislabError(run / "recipe.yaml", yaml_problem(exc)) from None
    if not isinstance(recipe, dict):
        raise VislabError(run / "recipe.yaml", "not a recipe (expected a mapping of fields)")
    try:
        history = csv_rows(run / "history.csv") if (run / "history.csv").is_file() else []
    except (UnicodeDecodeError, csv.Error) as exc:
        raise VislabError(run / "history.csv", f"not readable as CSV text ({type(exc).__name__})") from None
    check_history(history, run / "history.csv")
    try:
        results = json.loads((run / "results.json").read_text()) if (run / "results.json").is_file() else {}
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise VislabError(run / "results.json", "not valid JSON") from None
    if not isinstance(results, dict):
        raise VislabError(run / "results.json", "not the record vislab writes (expected a JSON object)")
    # the command that started the run, then one line per --resume
    commands = command_lines(run)
    changes = (run / "changes.txt").read_text().splitlines() if (run / "changes.txt").is_file() else []
    return {"recipe": recipe, "history": history, "results": results,
            "command": commands[0] if commands else "(not recorded)", "resumed": commands[1:], "commands": commands,
            "changes": [c.strip() for c in changes if c.strip()], "failure": latest_failure(run, commands),
            "process": training_process(run, commands),
            **({} if results else checkpoint_state(run / "last.ckpt"))}


def checkpoint_state(ckpt: Path) -> dict[str, Any]:
    """What an unfinished run's checkpoint says of it: ``replanned``, the epochs a time budget
    re-planned the run to (its recipe.yaml keeps the first plan), and ``epochs_done``, the epochs
    the checkpoint holds whole (history.csv may hold one more: a run killed between an epoch's
    line and its save), and its ``global_step``; each None when the checkpoint does not say;
    ``trained_seconds`` (:func:`clock_seconds`); ``unreadable`` when torch cannot open it; {}
    without a checkpoint."""
    if not ckpt.is_file():
        return {}
    import torch

    from vislab.models.checkpoints import loader_position

    try:  # memory-mapped: only the small records are read from a checkpoint of any size
        blob = torch.load(ckpt, map_location="cpu", weights_only=True, mmap=True)
    except Exception:  # noqa: BLE001 - whatever torch.load raises, the file is not a readable checkpoint
        return {"replanned": None, "epochs_done": None, "global_step": None, "trained_seconds": None, "unreadable": True}
    meta = blob.get("vislab") if isinstance(blob, dict) else None
    replanned = meta.get("replanned") if isinstance(meta, dict) else None
    epochs = replanned.get("epochs") if isinstance(replanned, dict) else None
    position = loader_position(blob) if isinstance(blob, dict) else None
    return {"replanned": epochs if isinstance(epochs, int) and not isinstance(epochs, bool) else None,
            "epochs_done": position[0] if position is not None else None,
            "global_step": blob.get("global_step") if isinstance(blob, dict) else None,
            "trained_seconds": clock_seconds(blob)}


def clock_seconds(blob: Any) -> float | None:
    """The seconds a run had trained when ``blob`` (a loaded checkpoint) was saved, every piece
    and a part of an epoch included: what its training clock (engine/callbacks.py TrainingClock,
    or the BudgetKeeper that is one) keeps in it, which a ``--resume`` starts from. None when the
    checkpoint holds no such record (an older vislab's)."""
    states = blob.get("callbacks") if isinstance(blob, dict) else None
    if not isinstance(states, dict):
        return None
    for key, state in states.items():
        if str(key).startswith(("TrainingClock", "BudgetKeeper")) and isinstance(state, dict):
            spent = state.get("spent_s")
            if isinstance(spent, (int, float)) and not isinstance(spent, bool):
                return float(spent)
    return None


def epoch_counts(data: dict[str, Any]) -> tuple[int | None, Any, Any]:
    """(epochs trained, epochs of the schedule, recipe.yaml's epochs) of :func:`read_run`'s
    ``data``. Trained: a finished run's own count (``epochs_trained``; an older vislab's results
    have none: its history's rows, None without them), an unfinished run's epochs its checkpoint
    holds whole (without a checkpoint that says, its history's rows). The
    schedule is the results' (a budget may have re-planned it), an unfinished run's checkpoint's
    re-plan, else the recipe's."""
    recipe, results, history = data["recipe"], data["results"], data["history"]
    planned = recipe.get("epochs")
    schedule = results.get("epochs") or data.get("replanned") or planned
    if not results:
        done = data.get("epochs_done")
        return (len(history) if done is None else done), schedule, planned
    counted = results.get("epochs_trained")  # 0: a time limit stopped it inside its first epoch
    trained = counted if isinstance(counted, int) and not isinstance(counted, bool) else (len(history) or None)
    return trained, schedule, planned


def command_lines(run: Path) -> list[str]:
    """The commands of a run folder's pieces (``command.txt``: the one that started it, then one
    per ``--resume``), blank lines left out; [] without the file."""
    path = run / "command.txt"
    if not path.is_file():
        return []
    return [c.strip() for c in path.read_text(encoding="utf-8", errors="replace").splitlines() if c.strip()]


def latest_failure(run: Path, commands: list[str]) -> str | None:
    """The line of the failure that stopped the run's latest piece (the last of ``commands``), or
    None: no piece failed, or a later one started since (``failed.json`` counts the pieces)."""
    try:
        found = json.loads((run / FAILED).read_text(encoding="utf-8"))
    except (OSError, ValueError):  # none, or not what vislab writes: no failure is claimed
        return None
    if not isinstance(found, dict) or found.get("commands") != len(commands) or not isinstance(found.get("error"), str):
        return None
    return found["error"]


def _proc_stat(pid: int) -> tuple[str, int] | None:
    """(state, start time in clock ticks since boot) of process ``pid`` from Linux's /proc; None
    without /proc or without such a process."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()  # the name in () may hold spaces
        return fields[0], int(fields[19])  # fields 3 and 22
    except (OSError, IndexError, ValueError):
        return None


def process_start(pid: int) -> int | None:
    """When process ``pid`` started (clock ticks since boot), which tells it from a later process
    given the same number; None without /proc or without such a process."""
    stat = _proc_stat(pid)
    return stat[1] if stat else None


def _machine() -> tuple[str | None, str | None]:
    """(this boot's id, this process's PID namespace) from Linux's /proc, each None where unknown:
    a process number means the same process only within both."""
    try:
        boot: str | None = Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        boot = None
    try:
        space: str | None = os.readlink("/proc/self/ns/pid")
    except OSError:
        space = None
    return boot, space


def process_alive(pid: int, started: int | None) -> bool:
    """Whether process ``pid`` of this machine still runs (not a zombie, which has ended and
    waits for its parent to collect it), and is the one that started at ``started``
    (:func:`process_start`; not checked where either is unknown)."""
    if pid <= 0 or os.name == "nt":  # on Windows signal 0 is Ctrl-C: never sent; 0 and -1 name groups
        return False
    try:
        os.kill(pid, 0)  # signal 0: only asks whether the process exists
    except PermissionError:  # another user's
        pass
    except OSError:
        return False
    stat = _proc_stat(pid)
    if stat is None:
        return True
    return stat[0] != "Z" and (started is None or stat[1] == started)


def process_record() -> dict[str, Any]:
    """This process as ``running.json`` records it: its number, machine (its boot and process
    namespace: a container on one host may have the host's name), start and the time."""
    boot, space = _machine()
    return {"pid": os.getpid(), "host": socket.gethostname(), "boot": boot, "pid_space": space,
            "started": process_start(os.getpid()), "since": time.time()}


def training_process(run: Path, commands: list[str]) -> dict[str, Any] | None:
    """The process that trains the run's latest piece (the last of ``commands``) as
    ``running.json`` records it (:func:`process_in`); None when the record is not that piece's:
    the process ended and removed it, an older vislab trained it, or the folder is a copy of the
    one it trains."""
    return process_in(run / RUNNING, run, pieces=len(commands))


def process_in(path: Path, run: Path, *, pieces: int | None = None) -> dict[str, Any] | None:
    """The process a record of ``running.json``'s form at ``path`` names for the run folder
    ``run`` (the piece ``pieces`` counts; None: any): ``pid``, ``host``, ``since`` (seconds since
    the epoch) and ``alive``: True, False (it ended without a word: killed; or the machine has
    restarted since), or None (it runs on another machine, or in another container, where it
    cannot be checked). None when there is no such record, or it is another piece's or folder's."""
    try:
        found = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    pid = found.get("pid") if isinstance(found, dict) else None
    if not isinstance(pid, int) or isinstance(pid, bool) or (pieces is not None and found.get("commands") != pieces):
        return None
    if isinstance(found.get("folder"), str) and Path(found["folder"]) != run.resolve():
        return None
    started = found.get("started") if isinstance(found.get("started"), int) else None
    host, (boot, space) = found.get("host"), _machine()
    since = found.get("since") if isinstance(found.get("since"), (int, float)) and 0 <= found["since"] < 1e11 else None
    if host != socket.gethostname() or found.get("pid_space") != space:
        alive = None
    elif found.get("boot") != boot:
        alive = False  # the process ran before this machine's restart
    else:
        alive = process_alive(pid, started)
    return {"pid": pid, "host": host, "since": since, "alive": alive}


def process_words(process: dict[str, Any]) -> str:
    """What :func:`training_process` found, in words.

        >>> process_words({"pid": 41, "host": "box", "since": None, "alive": False})
        'killed: process 41 ended without a word (a kill signal, the machine out of memory, a crash, a shutdown)'
        >>> process_words({"pid": 41, "host": "box", "since": None, "alive": None})
        'unfinished: process 41 on box (another machine or container) trains it, or was killed there'
    """
    pid = process["pid"]
    if process["alive"] is None:
        return (f"unfinished: process {pid} on {process['host']} (another machine or container) trains it, or was "
                "killed there")
    if not process["alive"]:
        return (f"killed: process {pid} ended without a word (a kill signal, the machine out of memory, a crash, "
                "a shutdown)")
    since = process["since"]
    return f"running: process {pid}" + (f", since {time.strftime('%Y-%m-%d %H:%M', time.localtime(since))}"
                                        if since is not None else "")
