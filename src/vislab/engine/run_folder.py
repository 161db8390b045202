"""A run folder's files: checks before a run starts or resumes, the recipe and command it
records, ``changes.txt`` (the settings the run decided, a line each) and ``results.json``."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
from pathlib import Path
from typing import Any, Iterable, Iterator

import yaml

from vislab.config import Recipe
from vislab.errors import Interrupted, VislabError, failure_line
from vislab.io import FAILED, RUNNING, atomic_write_text, written_by_runs
from vislab.log import info
from vislab.runfolders import command_lines, process_in, process_record, process_words


def no_checkpoint_to_resume(out_dir: Path) -> str:
    """Why ``--resume`` of ``out_dir`` has nothing to continue, in words."""
    if not out_dir.exists():
        return "--resume: no such run folder"
    if (out_dir / "recipe.yaml").is_file():  # a run stopped before its first checkpoint
        return ("--resume found no last.ckpt in this run folder: the run stopped before its first checkpoint, so "
                "run the same command without --resume (it starts afresh)")
    return "--resume found no last.ckpt in this run folder"


def check_run_folder(out_dir: Path, *, resume: bool, data_dirs: Iterable[str | Path | None] = ()) -> Path | None:
    """Refuse a run folder that cannot take this run (before any data is read): for a new run, one
    that holds checkpoints, files that are no run's, or lies inside one of the ``data_dirs`` (its
    files would mix with the images), and a folder another process of this machine trains now;
    return its last.ckpt when resuming."""
    last = out_dir / "last.ckpt"
    if rank_zero():  # ranks > 0 follow rank 0
        _refuse_held(out_dir, process_in(out_dir / RUNNING, out_dir))
    if resume:
        if not last.is_file():
            raise VislabError(out_dir, no_checkpoint_to_resume(out_dir))
        from vislab.models.checkpoints import check_readable

        check_readable(last, "--resume continues from it")
        if rank_zero():
            # a kill inside an atomic write leaves its temporary (.NAME.XXXX.tmp); the killed run is gone
            for tmp in out_dir.glob(".*.tmp"):
                tmp.unlink(missing_ok=True)
        return last
    if last.exists() or (out_dir / "best.ckpt").exists():
        raise VislabError(out_dir, "run folder already holds checkpoints; use --resume or another --out")
    if out_dir.exists() and not out_dir.is_dir():
        raise VislabError(out_dir, "is a file, but a run folder is needed")
    for data in (Path(d).resolve() for d in data_dirs if d is not None):
        if data == out_dir.resolve() or data in out_dir.resolve().parents:
            raise VislabError(out_dir, f"lies inside the data folder {data}: the run's files would mix with its "
                                       "images; give an --out outside it")
    if out_dir.is_dir() and not (out_dir / "recipe.yaml").is_file():  # a run that stopped early keeps its recipe
        # what the run would replace or append to; other files (a log the shell writes there) stay;
        # running.json is a process's claim, which _claim judges (one made since the check above: refused there)
        theirs = sorted(p.name for p in out_dir.iterdir() if written_by_runs(p.name) and p.name != RUNNING)
        if theirs:
            raise VislabError(out_dir, f"holds {theirs[0]} but no recipe.yaml: no vislab run's, and the run would "
                                       "replace it; give a new or empty --out")
        runs = sorted(p.name for p in out_dir.iterdir() if (p / "recipe.yaml").is_file())
        if runs:  # `vislab runs` and `report` would then see this run, not the ones inside it
            raise VislabError(out_dir, f"holds {len(runs)} run folder(s) (e.g. {runs[0]}/): a run needs a folder of "
                                       f"its own; give --out {out_dir / 'NAME'}")
    return None


def check_resumed_data(out_dir: Path, *, key: str, lines: list[str], folder: str | Path, value: str,
                       class_names: list[str] | None = None) -> None:
    """A resumed run goes on with the data it started on: refuse a training folder whose item
    ``lines`` (:mod:`vislab.data.manifest`: names and labels or sizes, not paths) differ from those
    whose digest last.ckpt recorded (``key`` in its metadata), naming the items that differ when
    the run folder recorded its own (``value``: what an item's value is, in words; label ids are
    named by the checkpoint's class names and the folder's ``class_names``). A checkpoint
    without the digest is not checked."""
    from vislab.data.manifest import difference_from_record, lines_digest

    last = out_dir / "last.ckpt"
    meta = recorded_meta(out_dir)  # readable: check_run_folder checked it
    recorded = meta.get(key)
    if recorded is not None and recorded != lines_digest(lines):
        how = difference_from_record(out_dir, lines, value=value, digest=recorded,
                                     names=(meta.get("class_names"), class_names))
        raise VislabError(folder, f"is not the data {last} was trained on ({how or 'other files or ' + value + 's'}); "
                                  "--resume continues a run on the training folder it started with")


def recorded_meta(out_dir: Path) -> dict[str, Any]:
    """The vislab metadata last.ckpt of ``out_dir`` holds ({} without one)."""
    from vislab.models.checkpoints import checkpoint_meta

    last = out_dir / "last.ckpt"
    return checkpoint_meta(last) if last.is_file() else {}


def prepare_run_folder(out_dir: Path, recipe: Recipe, *, resume: bool, command: str,
                       changes: list[str] | None = None, inputs: dict[str, Any] | None = None,
                       items: list[str] | None = None) -> Path | None:
    """Create the run folder and write the resolved recipe, the command, the ``inputs`` it was
    given (``inputs.json``: folders, labels, the recipe's name; what a ``--resume`` takes when
    not given again), the training folder's ``items`` (:mod:`vislab.data.manifest`) and
    ``changes.txt`` (the settings the data decided); return last.ckpt when resuming.

    A resume without a checkpoint is an error (Lightning would silently start afresh).
    A new run refuses a folder that already holds checkpoints, so nothing is overwritten.
    A resumed piece appends its command to ``command.txt``, and to ``changes.txt`` the lines its
    earlier pieces did not record.
    """
    last = check_run_folder(out_dir, resume=resume)
    if not rank_zero():  # a process of a multi-process launch runs this too: rank 0 alone writes the folder
        return last
    command = command or "(a call from Python: no command line)"  # a line each piece: results.json counts them
    if resume:
        _claim(out_dir, pieces=len(command_lines(out_dir)) + 1)  # before the folder says this piece started
        changes = [*(changes or []), *_renew_scoring_inputs(out_dir, inputs or {})]
        recorded = read_changes(out_dir)
        new = [line for line in changes if line not in recorded]
        if new:
            write_changes(out_dir, recorded + new)
        said = (out_dir / "command.txt").read_text(encoding="utf-8", errors="replace") \
            if (out_dir / "command.txt").is_file() else ""
        atomic_write_text(said + command + "\n", out_dir / "command.txt")
        return last
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise VislabError(out_dir, f"cannot create run folder ({exc.strerror})") from None
    _claim(out_dir, pieces=1)  # before anything else is written
    # a run that stopped before its first checkpoint left records of its own: this run starts afresh
    for name in STALE_RECORDS:
        stale = out_dir / name
        if stale.is_dir():
            shutil.rmtree(stale, ignore_errors=True)
        else:
            stale.unlink(missing_ok=True)
    atomic_write_text(yaml.safe_dump(recipe.to_dict(), sort_keys=False), out_dir / "recipe.yaml")
    atomic_write_text(command + "\n", out_dir / "command.txt")
    if inputs:
        atomic_write_text(json.dumps(inputs, indent=1) + "\n", out_dir / INPUTS)
    if items is not None:
        from vislab.data.manifest import write_items

        write_items(out_dir, items)
    if changes:
        write_changes(out_dir, changes)
    return None


SCORING_INPUTS = ("val_dir", "val_labels")
"""The inputs a resumed piece may change (its results are measured on them); the others are the run's."""


def _renew_scoring_inputs(out_dir: Path, inputs: dict[str, Any]) -> list[str]:
    """A resume given another validation folder (or labels) than ``inputs.json`` records: the
    record takes the new one, on which the results are measured (and which a later ``--resume``
    takes), and a line says so (returned, and said on the console)."""
    recorded = read_inputs(out_dir)
    if not recorded:  # a run folder of an older vislab: no record to keep true
        return []
    renewed = {k: inputs[k] for k in SCORING_INPUTS if inputs.get(k) is not None and inputs[k] != recorded.get(k)}
    if not renewed:
        return []
    if "val_dir" in renewed:  # the labels recorded were the old folder's
        renewed["val_labels"] = inputs.get("val_labels")
    atomic_write_text(json.dumps({**recorded, **renewed}, indent=1) + "\n", out_dir / INPUTS)
    flags = {"val_dir": "--val-dir", "val_labels": "--val-labels"}
    lines = [f"--resume: {flags[k]} {v} (the run started with {recorded.get(k) or 'none'}): the results are measured "
             f"on it, and {INPUTS} records it" for k, v in renewed.items() if v is not None and v != recorded.get(k)]
    for line in lines:
        info(line)
    return lines


INPUTS = "inputs.json"
STALE_RECORDS = ("changes.txt", "results.json", "history.csv", "val_predictions.csv", "metrics.csv", "snapshots",
                 "tensorboard", FAILED)  # and running.json, which _claim replaces when its process has ended
"""What a new run removes from a folder whose earlier run stopped before its first checkpoint
(the others it writes again itself)."""


def flag_values(flags: dict[str, Any]) -> dict[str, Any]:
    """Recipe fields set by flags as ``inputs.json`` holds them (JSON values: tuples as lists)."""
    return json.loads(json.dumps(flags, default=str))


def read_inputs(out_dir: Path) -> dict[str, Any]:
    """What a run was started with (``inputs.json``: paths, the recipe's name, ``flags`` the
    recipe fields its flags set; {} for a run folder of an older vislab); a file that is not
    such a record is one error naming it."""
    path = out_dir / INPUTS
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError):
        data = None
    if not isinstance(data, dict) or not all(isinstance(v, (str, type(None))) or (k == "flags" and isinstance(v, dict))
                                             for k, v in data.items()):
        raise VislabError(path, "is not the record vislab writes (a JSON mapping of names to paths): it was changed "
                                "by hand; restore it, or delete it and name the folders again")
    return data


def write_changes(out_dir: Path, changes: list[str]) -> None:
    """``changes.txt``: the settings the run decided or changed, a line each."""
    atomic_write_text("".join(f"{line}\n" for line in changes), out_dir / "changes.txt")


def read_changes(out_dir: Path) -> list[str]:
    """The lines of ``changes.txt`` (every piece of a resumed run), or [] when there is none."""
    path = out_dir / "changes.txt"
    try:
        return path.read_text(encoding="utf-8").splitlines() if path.is_file() else []
    except UnicodeDecodeError:
        raise VislabError(path, "is not UTF-8 text (vislab writes it so): it was changed by hand; restore or delete it") from None


def add_change(out_dir: Path, line: str) -> None:
    """One more line at the end of ``changes.txt`` (kept whole: written atomically); a line the
    file already holds (a second resume of a finished run says the same) is not repeated."""
    recorded = read_changes(out_dir)
    if line not in recorded:
        write_changes(out_dir, recorded + [line])


def read_results(out_dir: Path) -> dict:
    """The run folder's ``results.json`` ({} when there is none, or it cannot be read: a line says so,
    and the run's results are measured again)."""
    path = out_dir / "results.json"
    if not path.exists():
        return {}
    from vislab.log import info

    try:
        found = json.loads(path.read_text())
    except ValueError:
        why = "not valid JSON"
    except OSError as e:
        why = f"cannot be read ({e.strerror or e})"
    else:
        if isinstance(found, dict):
            return found
        why = "not a JSON object"
    info(f"{path}: {why}; read as no recorded results")
    return {}


def write_results(out_dir: Path, result: dict) -> None:
    """``results.json`` in the run folder, and a one-line summary."""
    from vislab.log import info

    result["checkpoint"] = str(result["checkpoint"])
    # the pieces of the run these results close: a later --resume adds a line, so `vislab runs`
    # tells results an unfinished resume has since overtaken (file times do not survive every copy)
    result["commands"] = len(command_lines(out_dir)) if (out_dir / "command.txt").is_file() else None
    atomic_write_text(json.dumps(result, indent=2), out_dir / "results.json")
    info(done_line(out_dir, result))


def done_line(out_dir: Path, result: dict) -> str:
    """The line a training run ends with: its scores, epochs and minutes, and where the rest is.

        >>> done_line(Path("runs/p1"), {"holdout_acc": 0.8512, "val_accuracy": 0.84, "epochs": 5, "epochs_trained": 4,
        ...                             "train_seconds": 90.0, "checkpoint": "runs/p1/best.ckpt"})
        'done: holdout_acc 0.8512, val_accuracy 0.8400, 4 of 5 epochs in 1.5 min; runs/p1/results.json holds every number, runs/p1/best.ckpt is the model'
    """
    best = f" (epoch {result['best_epoch']}, best.ckpt)" if isinstance(result.get("best_epoch"), int) else ""
    parts = [f"{k} {result[k]:.4f}{best if k.startswith('holdout') else ''}"
             for k in ("holdout_acc", "holdout_miou", "val_accuracy", "val_miou") if isinstance(result.get(k), (int, float))]
    epochs, trained = result.get("epochs"), result.get("epochs_trained")
    if epochs is not None:
        ran = f"{trained} of {epochs}" if trained not in (None, epochs) else f"{epochs}"
        parts.append(f"{ran} epoch{'' if epochs == 1 else 's'}" + (
            f" in {result['train_seconds'] / 60:.1f} min" if isinstance(result.get("train_seconds"), (int, float)) else ""))
    return f"done: {', '.join(parts)}; {out_dir / 'results.json'} holds every number, {result['checkpoint']} is the model"


def rank_zero() -> bool:
    """Whether this process writes the run folder's records: the only one, or rank 0 of a
    multi-process launch (torchrun sets ``RANK``; Lightning's own launcher ``LOCAL_RANK`` alone,
    and ``NODE_RANK`` on the other nodes; under ``srun`` with several tasks, which Lightning reads
    as one job, the task's ``SLURM_PROCID`` is its rank)."""
    env = os.environ
    slurm = env.get("SLURM_PROCID", "0") if env.get("SLURM_NTASKS", "1") not in ("", "1") else "0"
    return all(value == "0" for value in (env.get("RANK", "0"), env.get("LOCAL_RANK", "0"), env.get("NODE_RANK", "0"),
                                          slurm))


def _held_by_another(holder: dict[str, Any] | None) -> bool:
    """Whether a record (:func:`vislab.runfolders.process_in`) names another live process of this machine."""
    return bool(holder and holder["alive"] and holder["pid"] != os.getpid())


def _refuse_held(out_dir: Path, holder: dict[str, Any] | None) -> None:
    """The one-line refusal of a run folder that another live process of this machine trains."""
    if _held_by_another(holder):
        raise VislabError(out_dir, f"another vislab is training this run ({process_words(holder)}): two would "
                                   "overwrite each other's checkpoints; wait for it to end, stop it, or give another "
                                   f"--out (if no vislab trains it, delete {out_dir / RUNNING})")


def _claim(out_dir: Path, *, pieces: int) -> None:
    """``running.json`` made this process's record (of the piece ``pieces`` counts, until
    :func:`training_recorded` ends) in one step with the check that no other process holds it:
    the record, written whole to a file of its own, is hard-linked to the name, which fails when
    the name exists. A record of a process that has ended (or of another machine, which nothing
    here can check) is set aside and the claim tried again; one of a live process of this
    machine is refused. Where the file system has no hard links, the record replaces the name
    after the check alone."""
    path = out_dir / RUNNING
    mine, aside = (out_dir / f".{RUNNING}.{os.getpid()}.{what}" for what in ("claim", "ended"))
    atomic_write_text(json.dumps({"commands": pieces, "folder": str(out_dir.resolve()), **process_record()},
                                 indent=1) + "\n", mine)
    try:
        for _ in range(5):
            try:
                os.link(mine, path)
                return
            except FileExistsError:
                no_links = False
            except OSError:  # no hard links on this file system: the check alone
                no_links = True
            _refuse_held(out_dir, process_in(path, out_dir))
            if no_links:
                os.replace(mine, path)
                return
            try:  # whole, atomically: a record that another process claimed meanwhile is put back, and wins
                os.replace(path, aside)
            except FileNotFoundError:
                continue
            theirs = process_in(aside, out_dir)
            if _held_by_another(theirs):
                with contextlib.suppress(FileExistsError):
                    os.link(aside, path)
                _refuse_held(out_dir, theirs)
        raise VislabError(out_dir / RUNNING, "could not be claimed: other processes keep replacing it; try again")
    finally:
        mine.unlink(missing_ok=True)
        aside.unlink(missing_ok=True)


@contextlib.contextmanager
def training_recorded(out_dir: Path) -> Iterator[None]:
    """Around a training command, whose :func:`prepare_run_folder` records this process in
    ``running.json`` (``vislab runs`` shows the run as running): that record goes when the
    command ends, however it ends; a process killed without a word leaves it behind, and is
    then shown as killed. When the command fails (or is interrupted) after it started its piece
    of the run (its line in ``command.txt``, its record in ``running.json``), the run folder says
    so: ``failed.json`` (the failure's line and the pieces counted, which ``vislab runs`` reads)
    and a last line ``stopped: ...`` in ``changes.txt``; the exception goes on. A failure before
    that (a refused input, a run another process trains) left the folder as it was, and is not
    recorded. Rank 0 alone writes; nothing that goes wrong while recording hides the failure
    itself."""
    try:
        yield
    except BaseException as exc:
        try:
            if rank_zero() and not isinstance(exc, SystemExit) and _ours(out_dir):
                line = "interrupted" if isinstance(exc, (Interrupted, KeyboardInterrupt)) else failure_line(exc)
                commands = len(command_lines(out_dir))
                atomic_write_text(json.dumps({"commands": commands, "error": line}, indent=1) + "\n", out_dir / FAILED)
                write_changes(out_dir, read_changes(out_dir) + [f"stopped: {line}"])  # the same line again is this piece's
        except BaseException:  # noqa: BLE001 - an unwritable folder, a second Ctrl-C: the failure itself goes on
            pass
        raise
    finally:
        _forget_process(out_dir)


def _ours(out_dir: Path) -> bool:
    """Whether ``running.json`` records this process: it started the run's latest piece (a
    process refused before that, because another trains the run, did not)."""
    try:
        found = json.loads((out_dir / RUNNING).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    mine = process_record()
    return isinstance(found, dict) and all(found.get(k) == mine[k] for k in ("pid", "host", "started"))


def _forget_process(out_dir: Path) -> None:
    """Remove ``running.json`` when this process wrote it."""
    try:
        if rank_zero() and _ours(out_dir):
            (out_dir / RUNNING).unlink()
    except OSError:  # gone already: nothing to remove
        pass
