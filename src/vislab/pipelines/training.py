"""The one training skeleton both pipelines run: the run folder, the settings decided before
training, the time budget, the fit and the checkpoint selection, in one order."""

from __future__ import annotations

import dataclasses
import functools
import shlex
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, NamedTuple

from vislab.config import Recipe
from vislab.errors import Interrupted, VislabError
from vislab.log import info


class Fitted(NamedTuple):
    """What :func:`fit_run` returns on rank 0."""

    result: dict[str, Any]
    """The result so far, with the settings lines under ``changes``."""
    best: Path
    """The selected checkpoint."""
    recipe: Recipe
    """The recipe run (epochs as a budget planned them)."""
    kept: bool
    """A ``--resume`` of a finished run: ``result`` is what its end recorded (validation and
    calibration included), to be written back as it is, not measured again."""


@dataclass
class TrainingJob:
    """What a pipeline brings to :func:`fit_run`.

    ``make_module(recipe, steps_per_epoch, pretrained)`` builds the LightningModule
    (``steps_per_epoch=1`` for the budget's timing probe; ``pretrained=False``: the recipe's
    ``weights`` left unread, for the probe and for a resume, whose checkpoint holds every weight); ``make_data(recipe)`` the DataModule; ``holdout_batches`` and
    ``eval_scale`` size the held-out evaluation for the budget (evaluated pixels per training
    pixel); ``describe(recipe)`` prints the data lines once the run folder is prepared.
    ``n_train`` counts the training split's ``items`` ("images", "pairs"). ``inputs``: what the
    run was given (folders, labels, the recipe's name), recorded for a later ``--resume``;
    ``item_lines`` its training folder's items (:mod:`vislab.data.manifest`), recorded beside them.
    """

    out: Path
    recipe: Recipe
    monitor: str
    n_train: int
    items: str
    make_module: Callable[[Recipe, int, bool], Any]
    make_data: Callable[[Recipe], Any]
    resume: bool = False
    command: str = ""
    changes: list[str] = field(default_factory=list)
    extra_callbacks: list = field(default_factory=list)
    holdout_batches: Callable[[Recipe], int] = lambda r: 0
    eval_scale: float = 1.0
    describe: Callable[[Recipe], None] = lambda r: None
    inputs: dict[str, str | None] = field(default_factory=dict)
    item_lines: list[str] | None = None


INPUT_FLAGS = {"train_dir": "TRAIN_DIR", "val_dir": "--val-dir", "labels": "--labels", "val_labels": "--val-labels",
               "classes": "--classes"}
"""The inputs a run folder records (``inputs.json``), as the command line names them."""


def input_record(given: dict[str, Any] | None, **paths: str | Path | None) -> dict[str, Any]:
    """What a training run records of its inputs: each path made absolute (None: not given), the
    recipe as given (``given["recipe"]``: a shipped name, else its file's absolute path) and the
    recipe fields its flags set (``given["flags"]``, as JSON values)."""
    from vislab.config import shipped_recipes
    from vislab.engine.run_folder import flag_values

    given = given or {}
    record: dict[str, Any] = {k: None if v is None else str(Path(v).resolve()) for k, v in paths.items()}
    recipe = given.get("recipe")
    if recipe is not None:
        record["recipe"] = recipe if recipe in shipped_recipes() else str(Path(recipe).resolve())
    if given.get("flags"):
        record["flags"] = flag_values(given["flags"])
    return record


def resumed_inputs(out: Path, given: dict[str, Any], *, val_dir: str | Path | None = None) -> dict[str, Any]:
    """The inputs of a ``--resume``: each one not given again (None) taken from what the run
    started with (``inputs.json``), said in one line; a ``recipe`` given again that is the one
    the run started with is dropped (the run folder's saved copy goes on). A run folder of an
    older vislab, without the record, leaves ``given`` as it is. ``val_dir``: the validation
    folder decided elsewhere (``--data``'s), when ``given`` holds none.

    The run's ``val_labels`` label its own validation folder: they are not taken for another
    folder (said), nor when that folder is not taken."""
    from vislab.engine.run_folder import INPUTS, no_checkpoint_to_resume, read_inputs

    if not (Path(out) / "last.ckpt").is_file():  # before any input is looked for: nothing to resume
        raise VislabError(out, no_checkpoint_to_resume(Path(out)))
    recorded = read_inputs(out)
    result = dict(given)
    taken: dict[str, str] = {}
    for key, value in given.items():
        if key in INPUT_FLAGS and key != "val_labels" and value is None and recorded.get(key) is not None:
            where = Path(recorded[key])
            if not where.exists():
                if key == "val_dir":  # optional: the run goes on without its final validation
                    info(f"--resume: the run's {INPUT_FLAGS[key]} {where} is gone; not taken (give {INPUT_FLAGS[key]} "
                         "to name it where it is now)")
                    continue
                raise VislabError(where, f"not found: the run started with it as {INPUT_FLAGS[key]} ({out / INPUTS}); "
                                         f"give {INPUT_FLAGS[key]} to name it where it is now")
            result[key] = where
            taken[key] = f"{INPUT_FLAGS[key]} {recorded[key]}"
    scored = result.get("val_dir") if result.get("val_dir") is not None else val_dir
    own = recorded.get("val_dir") is not None and scored is not None and \
        Path(scored).resolve() == Path(recorded["val_dir"]).resolve()
    if "val_labels" in given and given["val_labels"] is None and recorded.get("val_labels") is not None:
        where = Path(recorded["val_labels"])
        if not own:
            if scored is not None:
                info(f"--resume: the run's --val-labels {where} is not taken: it labels {recorded['val_dir']}, and "
                     f"--val-dir is {scored} (give --val-labels for it if it needs one)")
        elif not where.exists():
            info(f"--resume: the run's --val-labels {where} is gone; not taken (give --val-labels to name it where it "
                 "is now)")
        else:
            result["val_labels"] = where
            taken["val_labels"] = f"--val-labels {where}"
    if given.get("recipe") is not None and input_record({"recipe": given["recipe"]}).get("recipe") == recorded.get("recipe"):
        result["recipe"] = None
    if taken:
        info(f"--resume: {', '.join(taken.values())}, as the run started (from {out / INPUTS})")
    return result


def refuse_new_val_dir(out: Path, val_dir: str | Path | None, task: str,
                       val_labels: str | Path | None = None) -> None:
    """Refuse a ``--resume`` of a finished run with a ``val_dir`` (or ``val_labels``) other than the
    one it recorded (``inputs.json``): the resume keeps the run's recorded results, so the folder
    would not be scored into them. Finished: its results were recorded at the step its last.ckpt
    holds, with every epoch of its schedule trained (a run a time limit stopped records them too,
    and goes on)."""
    from vislab.engine.run_folder import read_inputs, read_results
    from vislab.runfolders import checkpoint_state

    inputs = read_inputs(out)
    if val_labels is not None and val_dir is None and inputs.get("val_dir") is None:
        raise VislabError("--val-labels", "labels a --val-dir; give one, or drop it")
    changed = [(flag, given, inputs.get(key)) for key, flag, given in
               (("val_dir", "--val-dir", val_dir), ("val_labels", "--val-labels", val_labels))
               if given is not None and Path(given).resolve() != Path(inputs.get(key) or out / "(none)").resolve()]
    if not changed:
        return
    earlier = read_results(out)
    for flag, given, _ in changed:
        if earlier and not Path(given).exists():  # before any advice to score it
            raise VislabError(given, f"{flag}: {'folder' if flag == '--val-dir' else 'file'} not found")
    if not earlier or checkpoint_state(out / "last.ckpt").get("global_step") != earlier.get("global_step") \
            or earlier.get("epochs_trained", earlier.get("epochs")) != earlier.get("epochs"):
        return
    flag, given, recorded = changed[0]
    scorer = "cls eval" if task == "cls" else "seg score"
    folder = val_dir if val_dir is not None else inputs.get("val_dir")
    labels = f" --labels {shlex.quote(str(val_labels))}" if val_labels is not None else ""
    none = "no validation folder" if flag == "--val-dir" else "no labels file"
    raise VislabError(given, f"{flag}: {out} finished its schedule with {recorded or none}, and a resume keeps what "
                             f"it recorded; score this folder with `vislab {scorer} {shlex.quote(str(out))} "
                             f"{shlex.quote(str(folder))}{labels}`")


def fit_run(job: TrainingJob) -> Fitted | None:
    """Resolve the learning rate and the time budget, print and record every setting the run
    decided (``changes.txt``), write the recipe into the run folder, seed, and fit.

    Returns :class:`Fitted` on rank 0; None on other ranks.
    """
    import lightning.pytorch as pl

    from vislab.engine.callbacks import ThinBatchNorm
    from vislab.engine.run_folder import add_change
    from vislab.engine.trainer import at_least_one_batch, build_trainer, fit_and_select

    recipe, changes = job.recipe, list(job.changes)

    def make_trainer(r: Recipe, *extra: pl.Callback) -> pl.Trainer:
        extra_callbacks = [*job.extra_callbacks, ThinBatchNorm(in_run_folder), *extra]
        trainer = build_trainer(r, job.out, monitor=job.monitor, extra_callbacks=extra_callbacks)
        return at_least_one_batch(trainer, r, job.n_train)

    def record(line: str) -> None:  # a line added after the run, in changes.txt at once
        changes.append(line)
        add_change(job.out, line)  # after the lines of this run's earlier pieces

    # the callbacks' lines (a resume's, the budget's re-plans) go to changes.txt alone, which the
    # result reads at the end: a function of the module, not of this call, as ddp_spawn pickles them
    in_run_folder = functools.partial(add_change, job.out)
    try:
        trainer, recipe, keeper, module, ckpt_path = _before_fit(job, recipe, changes, make_trainer, in_run_folder)
        data = job.make_data(recipe)
    except KeyboardInterrupt:  # before Lightning's own Ctrl-C handling: no checkpoint was touched
        raise Interrupted(f"{job.out}: before training " + (
            "resumed; last.ckpt is as it was, and `--resume` continues it" if job.resume else
            "started; no checkpoint was written, so run the same command again")) from None
    done = fit_and_select(trainer, module, data, job.out, ckpt_path, metric=job.monitor)
    if done is None:
        return None
    return _after_fit(job, recipe, changes, record, keeper, done)


def _before_fit(job: TrainingJob, recipe: Recipe, changes: list[str], make_trainer: Callable[..., Any],
                record: Callable[[str], None]) -> tuple[Any, Recipe, Any, Any, Path | None]:
    """The settings :func:`fit_run` decides before its fit (batch, lr, precision, the budget's
    epochs), printed and recorded, and the run folder prepared: (trainer, recipe, the budget's
    keeper or None, module, the checkpoint a resume continues from)."""
    import lightning.pytorch as pl

    from vislab.engine.budget import (budget_epochs, checkpoint_seconds, epoch_tail_seconds, resize_step_costs,
                                      seconds_per_forward, seconds_per_step)
    from vislab.engine.callbacks import BudgetKeeper, TrainingClock
    from vislab.engine.run_folder import prepare_run_folder
    from vislab.engine.trainer import resolve_lr, steps_per_epoch
    from vislab.pipelines.settings import fit_batch

    trainer = make_trainer(recipe, TrainingClock(record))  # the seconds of every piece (a budget's keeper is one too)
    world = trainer.world_size  # each process takes its share of the split
    recipe, line = fit_batch(recipe, job.n_train // world, f"training {job.items}" + (
        f" per process ({job.n_train} over {world} processes)" if world > 1 else ""))
    changes += [line] if line else []
    recipe, lr_lines = resolve_lr(recipe, trainer)
    changes += lr_lines
    precision = str(trainer.precision)  # as Lightning runs it (16-mixed is bf16-mixed on a CPU)
    if recipe.precision in ("16", "16-mixed") and precision == "bf16-mixed":  # Lightning's own choice on a CPU
        changes.append(f"precision {recipe.precision} runs as bf16-mixed: float16 autocast needs a GPU, and on "
                       f"this {trainer.strategy.root_device.type} Lightning autocasts to bfloat16")
    epoch_steps = None  # a progressive resize's timed step costs per epoch (a fresh budgeted run only)
    tail = 0.0  # the seconds after an epoch's last step the plan priced (a resumed run's keeper has its own)
    if recipe.budget_minutes and not job.resume and trainer.world_size > 1:
        # every process would time its own steps before the processes can talk: plans that differ by
        # one batch leave one process waiting for the others' gradients for ever
        changes.append(f"budget_minutes {recipe.budget_minutes:g} dropped: a time budget is planned from one "
                       f"process's timing and this run has {trainer.world_size} processes; the recipe's "
                       f"{recipe.epochs} epochs run instead (--epochs sets them)")
        recipe = dataclasses.replace(recipe, budget_minutes=None)  # with_overrides reads None as "not given"
    if recipe.limit_train_batches is not None and not job.resume:  # set by hand (a budget's own is said with it)
        every = steps_per_epoch(trainer, dataclasses.replace(recipe, limit_train_batches=None), job.n_train)
        limited = steps_per_epoch(trainer, recipe, job.n_train)
        given = repr(recipe.limit_train_batches)  # 1 (one batch) and 1.0 (all of them) told apart
        changes.append(f"limit_train_batches {given}: each epoch trains on {limited} of its "
                       f"{every} batches (a fresh shuffle each)" if limited < every else
                       f"limit_train_batches {given}: no limit, each epoch has {every} "
                       f"batch{'es' if every != 1 else ''}")
    if recipe.budget_minutes and not job.resume:  # a resumed run keeps the epochs its budget gave
        probe = job.make_module(recipe, 1, False)  # timing needs no pretrained weights
        loader, device = job.make_data(recipe).train_dataloader(), trainer.strategy.root_device
        step_s = seconds_per_step(probe, loader, device, precision=precision)
        epoch_steps, how = resize_step_costs(probe, loader, device, step_s, precision=precision)
        held_out = job.holdout_batches(recipe)
        forward_s = seconds_per_forward(probe, loader, device, precision=precision) if held_out else None
        overhead = (2 if recipe.holdout > 0 else 1) * checkpoint_seconds(probe)
        recipe, line = budget_epochs(recipe, step_s, steps_per_epoch(trainer, recipe, job.n_train),
                                     held_out, eval_scale=job.eval_scale, forward_seconds=forward_s,
                                     epoch_overhead=overhead, epoch_steps=epoch_steps, how=how)
        # until an epoch has ended, the keeper prices its held-out pass as the plan did
        tail = epoch_tail_seconds(step_s, held_out, eval_scale=job.eval_scale, epoch_overhead=overhead,
                                  forward_seconds=forward_s)
        changes.append(line)
        del probe, loader  # not held through the run (a loader's worker processes, a copy of the network)
    keeper = None
    if recipe.budget_minutes:  # held during the run; a resumed run gets what is left of it
        # a re-plan may add epochs when the run goes faster than its probe said, up to twice the plan;
        # a progressive resize's re-plans only shorten it (None: at most the epochs planned at the
        # time): more epochs move its ramp later, and the side it trains at would shrink again
        most = None if recipe.resize_from else 2 * recipe.epochs
        keeper = BudgetKeeper(recipe.budget_minutes, record=record, weights=epoch_steps, most=most, tail=tail)
        trainer = make_trainer(recipe, keeper)
    if recipe.resize_from not in (None, recipe.image_size) and recipe.epochs < 2 and not job.resume:
        changes.append(f"resize_from {recipe.resize_from} unused: a 1-epoch schedule trains at image_size "
                       f"{recipe.image_size} throughout (a progressive resize grows the side over 2 or more epochs)")
    for line in changes:
        info(line if line.startswith("warning: ") else f"setting: {line}")  # a warning is not a setting
    pl.seed_everything(recipe.seed, workers=True, verbose=False)
    # built before the run folder is written, so that a network the recipe cannot build (a frozen
    # layer it lacks, weights it has none of) leaves no folder behind; a resume takes every weight
    # from its checkpoint: the recipe's weights file may have moved since
    module = job.make_module(recipe, steps_per_epoch(trainer, recipe, job.n_train), not job.resume)
    ckpt_path = prepare_run_folder(job.out, recipe, resume=job.resume, command=job.command, changes=changes,
                                   inputs=job.inputs, items=job.item_lines)
    job.describe(recipe)
    return trainer, recipe, keeper, module, ckpt_path


def _after_fit(job: TrainingJob, recipe: Recipe, changes: list[str], record: Callable[[str], None], keeper: Any,
               done: tuple[dict[str, Any], Path, dict[str, Any]]) -> Fitted:
    """:func:`fit_run`'s result once its fit returned on rank 0: a finished run's resume keeps
    its recorded results, the epochs of the schedule that ran, every piece's seconds."""
    from vislab.engine.run_folder import read_changes, read_results

    result, best, facts = done  # the facts, not the module's or callbacks' attributes: ddp_spawn trains a copy
    finished = False  # a resume of a run that had finished: its recorded results stand
    if job.resume and facts.get("resumed_at_step") == result["global_step"]:
        earlier = read_results(job.out)
        finished = earlier.get("global_step") == result["global_step"]  # written by the end of this very state
        if finished:
            # nothing trained, and what its end recorded (validation, calibration) stays; this piece
            # selected nothing (no epoch ran): its null score must not replace the recorded one
            result = {**earlier, **{k: v for k, v in result.items() if k != "train_seconds" and v is not None}}
        line = (f"--resume: nothing left to train, {job.out} finished its schedule; its recorded results are kept"
                if finished else f"--resume: nothing left to train in {job.out}; its results are measured again")
        info(line)
        record(line)
    if facts.get("replanned_epochs") is not None:  # the budget ended the run earlier (in this piece or one before)
        recipe = recipe.with_overrides(epochs=facts["replanned_epochs"])
    result["epochs"] = recipe.epochs  # of the schedule that ran
    if "epochs_done" in facts and not finished:  # fewer when a time limit stopped it
        result["epochs_trained"] = int(facts["epochs_done"])
    if recipe.teacher:  # distillation (either task): the runs whose soft targets it learnt from
        result["teacher"] = list(recipe.teacher)
    if facts.get("seconds_before") and not finished:  # the run's earlier pieces: results.json counts every piece
        result["train_seconds"] = round(result["train_seconds"] + facts["seconds_before"], 1)
    if keeper is not None and facts.get("budget_epochs_here"):  # counting earlier pieces of the run
        trained = result.get("epochs_trained", recipe.epochs)
        line = budget_overrun(keeper.minutes, result["train_seconds"]) or (
            None if result.get("stopped_early") else  # max_minutes ended it, and said so
            budget_underrun(keeper.minutes, result["train_seconds"], trained, keeper.most))
        if line:  # held inside epochs from their pace so far: a held-out pass that slows down a lot still runs over
            info(f"warning: {line}")
            record(line)
    recorded = read_changes(job.out)  # every piece's lines: a resumed piece only appends to the file
    if recorded or changes:
        result["changes"] = recorded or changes
    return Fitted(result, best, recipe, finished)


OVERRUN = 1.05
"""A budgeted run that trains longer than this times its budget says so."""


UNDERRUN = 0.8
"""A budgeted run that trains less than this share of its budget says so, and why if it can."""


def budget_underrun(budget_minutes: float, train_seconds: float, epochs: int, most: int | None) -> str | None:
    """The line a budgeted run adds when it trained under ``UNDERRUN`` x its budget, else None:
    re-plans add epochs up to ``most`` (None: a progressive resize, whose re-plans only shorten)."""
    if train_seconds >= UNDERRUN * budget_minutes * 60:
        return None
    why = ""
    if most is None:
        why = "; a progressive resize's re-plans only take epochs away, so its first plan was the most it could train"
    elif epochs >= most:
        why = (f"; re-plans add epochs up to twice the first plan, and it trained all {epochs} (its first steps, "
               "which planned it, ran slower than the rest): --epochs sets more")
    return (f"--budget {budget_minutes:g} min: training took {train_seconds / 60:.1f} min, "
            f"{100 * train_seconds / (budget_minutes * 60):.0f} % of it{why}")


def budget_overrun(budget_minutes: float, train_seconds: float) -> str | None:
    """The line a budgeted run adds when it trained over ``OVERRUN`` x its budget, else None."""
    if train_seconds <= OVERRUN * budget_minutes * 60:
        return None
    return (f"--budget {budget_minutes:g} min: training took {train_seconds / 60:.1f} min, "
            f"{100 * train_seconds / (budget_minutes * 60):.0f} % of it; the epochs were planned from the speed of the "
            "first steps, and the run was slower than that")
